//! One HTTP/2 channel per peer address, shared by every id at that address and
//! closed only when the last of them lets go. Channels connect lazily, so
//! nothing dials while a lock is held.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

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

#[derive(Default)]
pub struct ChannelPool {
    settings: ChannelSettings,
    by_addr: Mutex<HashMap<String, (Channel, usize)>>,
}

impl ChannelPool {
    pub fn new(settings: ChannelSettings) -> ChannelPool {
        ChannelPool {
            settings,
            by_addr: Mutex::default(),
        }
    }

    /// The channel for `addr`, created on first use; pair every call with `release`.
    pub fn acquire(&self, addr: &str) -> Result<Channel, AddrError> {
        let mut map = self.by_addr.lock().expect("channel pool poisoned");
        if let Some((ch, users)) = map.get_mut(addr) {
            *users += 1;
            return Ok(ch.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|_| AddrError {
                addr: addr.to_string(),
                why: "not a valid URI authority",
            })?
            .connect_timeout(self.settings.connect_timeout)
            .http2_keep_alive_interval(self.settings.keepalive_interval)
            .keep_alive_timeout(self.settings.keepalive_timeout)
            .keep_alive_while_idle(true)
            .initial_stream_window_size(Some(1 << 20))
            .initial_connection_window_size(Some(64 << 20))
            .tcp_nodelay(true);
        let ch = endpoint.connect_lazy();
        map.insert(addr.to_string(), (ch.clone(), 1));
        Ok(ch)
    }

    /// Gives up one use of `addr`'s channel; the last release closes it.
    pub fn release(&self, addr: &str) {
        let mut map = self.by_addr.lock().expect("channel pool poisoned");
        if let Some((_, users)) = map.get_mut(addr) {
            *users -= 1;
            if *users == 0 {
                map.remove(addr);
            }
        }
    }

    /// How many ids use the channel to `addr` (0: none open).
    pub fn users(&self, addr: &str) -> usize {
        let map = self.by_addr.lock().expect("channel pool poisoned");
        map.get(addr).map_or(0, |(_, n)| *n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shared_address_is_reference_counted() {
        let pool = ChannelPool::new(ChannelSettings::default());
        pool.acquire("127.0.0.1:1").unwrap();
        pool.acquire("127.0.0.1:1").unwrap();
        assert_eq!(pool.users("127.0.0.1:1"), 2);
        pool.release("127.0.0.1:1");
        assert_eq!(pool.users("127.0.0.1:1"), 1);
        pool.release("127.0.0.1:1");
        assert_eq!(pool.users("127.0.0.1:1"), 0);
    }
}
