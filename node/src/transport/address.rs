//! Peer addresses are `host:port` (an IP or a DNS name). A bad one is an error
//! naming it, never a silent fallback to some default address.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid peer address {addr:?}: {why}")]
pub struct AddrError {
    pub addr: String,
    pub why: &'static str,
}

pub fn validate_peer_addr(addr: &str) -> Result<(), AddrError> {
    let err = |why| AddrError {
        addr: addr.to_string(),
        why,
    };
    if addr.contains("://") {
        return Err(err("expected host:port without a scheme"));
    }
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| err("expected host:port"))?;
    let host = match (host.strip_prefix('['), host.strip_suffix(']')) {
        (Some(_), Some(_)) if host.len() >= 2 => {
            let inner = &host[1..host.len() - 1];
            if inner.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(err("brackets must hold an IPv6 address"));
            }
            inner
        }
        (None, None) => host,
        _ => return Err(err("unbalanced brackets")),
    };
    if host.is_empty() {
        return Err(err("empty host"));
    }
    if host.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err(err("host contains whitespace or '/'"));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => return Err(err("port must be a number from 1 to 65535")),
        Ok(_) => {}
    }
    // What the channel will be built from must parse too: every check that
    // can refuse an address runs here, before anything changes. It must also
    // name this very host: "x@host:1" parses, with "x" as user info, and
    // would dial host:1 while the peer table shows "x@host:1" (found by
    // fuzzing, node/tests/fuzz).
    match format!("http://{addr}").parse::<tonic::codegen::http::Uri>() {
        Ok(uri)
            if uri.authority().map(|a| a.as_str()) == Some(addr)
                && uri
                    .host()
                    .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
                    == Some(host) =>
        {
            Ok(())
        }
        Ok(_) => Err(err(
            "the channel would dial another host (user info before '@'?)",
        )),
        Err(_) => Err(err("not a valid URI authority")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ips_and_names_refuses_the_rest() {
        for ok in ["127.0.0.1:7000", "raft-0.raft-peers.ns.svc:7000", "[::1]:9"] {
            assert_eq!(validate_peer_addr(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "127.0.0.1",
            ":7000",
            "http://a:1",
            "a:0",
            "a:99999",
            "a b:1",
            "a:x",
            "[x:1",
            "[x]:1",
            "x]:1",
            "a%b:1",
            "@a.a---:1",
            "user@10.0.0.1:7000",
        ] {
            assert!(validate_peer_addr(bad).is_err(), "{bad}");
        }
    }
}
