//! One HTTP/2 channel per peer address, shared by every id at that address and
//! closed only when the last of them lets go. With TLS a channel verifies the
//! member id it dials, so it is one per address and id. Channels connect
//! lazily, so nothing dials while a lock is held.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use raftlane_tls::{Dialer, Expect};
use tonic::transport::Channel;

use super::AddrError;

/// Connection settings for peer channels.
#[derive(Clone, Debug)]
pub struct ChannelSettings {
    pub connect_timeout: Duration,
    /// HTTP/2 ping interval and ping timeout: a silently dead connection is found
    /// in about their sum.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
}

impl Default for ChannelSettings {
    fn default() -> Self {
        ChannelSettings {
            connect_timeout: Duration::from_secs(3),
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(3),
        }
    }
}

/// A channel's address, and the member id it verifies (TLS only).
type Key = (String, Option<u64>);

pub struct ChannelPool {
    settings: ChannelSettings,
    dialer: Dialer,
    by_addr: Mutex<HashMap<Key, (Channel, usize)>>,
}

impl ChannelPool {
    pub fn new(settings: ChannelSettings, dialer: Dialer) -> ChannelPool {
        ChannelPool {
            settings,
            dialer,
            by_addr: Mutex::default(),
        }
    }

    fn key(&self, addr: &str, id: u64) -> Key {
        (addr.to_string(), self.dialer.is_tls().then_some(id))
    }

    /// The channel to member `id` at `addr`, created on first use; pair every
    /// call with `release`.
    pub fn acquire(&self, addr: &str, id: u64) -> Result<Channel, AddrError> {
        let key = self.key(addr, id);
        let mut map = self.by_addr.lock().expect("channel pool poisoned");
        if let Some((ch, users)) = map.get_mut(&key) {
            *users += 1;
            return Ok(ch.clone());
        }
        let endpoint = self
            .dialer
            .endpoint(addr)
            .map_err(|_| AddrError {
                addr: addr.to_string(),
                why: "not a valid URI authority",
            })?
            .connect_timeout(self.settings.connect_timeout)
            .http2_keep_alive_interval(self.settings.keepalive_interval)
            .keep_alive_timeout(self.settings.keepalive_timeout)
            .keep_alive_while_idle(true)
            .initial_stream_window_size(Some(1 << 20))
            .initial_connection_window_size(Some(64 << 20));
        let ch = self.dialer.channel(endpoint, Expect::Member(id));
        map.insert(key, (ch.clone(), 1));
        Ok(ch)
    }

    /// Gives up one use of the channel to `id` at `addr`; the last release closes it.
    pub fn release(&self, addr: &str, id: u64) {
        let key = self.key(addr, id);
        let mut map = self.by_addr.lock().expect("channel pool poisoned");
        if let Some((_, users)) = map.get_mut(&key) {
            *users -= 1;
            if *users == 0 {
                map.remove(&key);
            }
        }
    }

    /// How many ids use channels to `addr` (0: none open).
    pub fn users(&self, addr: &str) -> usize {
        let map = self.by_addr.lock().expect("channel pool poisoned");
        map.iter()
            .filter(|((a, _), _)| a == addr)
            .map(|(_, (_, n))| n)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shared_address_is_reference_counted() {
        let pool = ChannelPool::new(ChannelSettings::default(), Dialer::Plaintext);
        pool.acquire("127.0.0.1:1", 1).unwrap();
        pool.acquire("127.0.0.1:1", 2).unwrap();
        assert_eq!(pool.users("127.0.0.1:1"), 2);
        pool.release("127.0.0.1:1", 1);
        assert_eq!(pool.users("127.0.0.1:1"), 1);
        pool.release("127.0.0.1:1", 2);
        assert_eq!(pool.users("127.0.0.1:1"), 0);
    }
}
