//! Which ICE candidates can ever work, so a call neither gathers nor offers nor tries
//! the ones that cannot (issue #8).
//!
//! A loopback host candidate (`127.0.0.1`, `::1`) reaches only the same machine. Offered
//! to a partner elsewhere it costs a useless candidate pair, and through a TURN relay it
//! is worse: the ICE agent pairs our relay candidate with the partner's loopback address,
//! the TURN client asks the server for a permission to `127.0.0.1`, and coturn refuses
//! it (`403 Forbidden IP`); a TURN client bound to `127.0.0.1` cannot even send to a
//! routed server (`EINVAL`). So:
//!
//! - [`host_bind_addrs`]: bind the machine's LAN address, and loopback only when there
//!   is none (two apps on one machine still meet each other on the LAN address);
//! - [`offer_local_candidate`]: send a loopback candidate to the partner only when this
//!   side has nothing but loopback addresses (tests and offline machines);
//! - [`usable_remote_candidate`]: drop a partner's loopback candidate unless this side
//!   is bound to loopback itself (then the partner is on this very machine), and
//!   unspecified addresses always.
//!
//! Candidates are the SDP attribute strings of trickle ICE
//! (`candidate:1 1 udp 2130706431 10.0.0.2 50000 typ host`), so this file needs no
//! webrtc types; mDNS names (`….local`) and anything unparsable are kept (the ICE
//! agent judges those).

use std::net::{IpAddr, SocketAddr};

/// Local addresses to gather host candidates on when the user named none
/// (`--udp-addr`): the LAN address (`lan`, see [`super::lan_ip`]) when this machine has
/// one, else loopback, so a machine without a network still calls itself.
pub fn host_bind_addrs(lan: Option<IpAddr>) -> Vec<String> {
    match lan {
        Some(ip) if !ip.is_loopback() && !ip.is_unspecified() => {
            vec![SocketAddr::new(ip, 0).to_string()]
        }
        _ => vec!["127.0.0.1:0".to_owned()],
    }
}

/// The connection address of an SDP candidate attribute (`candidate:<foundation>
/// <component> <transport> <priority> <address> <port> typ …`, with or without the
/// `a=` prefix); `None` for an mDNS name or anything unparsable.
pub fn candidate_ip(candidate: &str) -> Option<IpAddr> {
    let body = candidate.trim();
    let body = body.strip_prefix("a=").unwrap_or(body);
    let body = body.strip_prefix("candidate:")?;
    body.split_whitespace().nth(4)?.parse().ok()
}

/// Whether an SDP candidate attribute is a TURN relay candidate (`… typ relay …`).
pub fn is_relay_candidate(candidate: &str) -> bool {
    let mut words = candidate.split_whitespace();
    while let Some(word) = words.next() {
        if word == "typ" {
            return words.next() == Some("relay");
        }
    }
    false
}

/// The IPs of local bind addresses like `127.0.0.1:0` or `10.0.0.2:0` (unparsable
/// entries are skipped).
fn bound_ips(local_addrs: &[String]) -> Vec<IpAddr> {
    local_addrs
        .iter()
        .filter_map(|a| a.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .collect()
}

/// Whether to send this local candidate to the partner, given the addresses this side
/// gathers on (`local_addrs`, as passed to the peer connection). A loopback candidate
/// goes out only when every local address is loopback (a test on one machine).
pub fn offer_local_candidate(candidate: &str, local_addrs: &[String]) -> bool {
    let Some(ip) = candidate_ip(candidate) else {
        return true;
    };
    if ip.is_unspecified() {
        return false;
    }
    if ip.is_loopback() {
        let ips = bound_ips(local_addrs);
        return !ips.is_empty() && ips.iter().all(IpAddr::is_loopback);
    }
    true
}

/// Whether a candidate from the partner can ever work here, given the addresses this
/// side gathers on (`local_addrs`): a loopback candidate only when this side is bound to
/// loopback too (then the partner runs on this machine); an unspecified address never.
pub fn usable_remote_candidate(candidate: &str, local_addrs: &[String]) -> bool {
    let Some(ip) = candidate_ip(candidate) else {
        return true;
    };
    if ip.is_unspecified() {
        return false;
    }
    if ip.is_loopback() {
        return bound_ips(local_addrs).iter().any(IpAddr::is_loopback);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOP: &str = "candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host";
    const LAN: &str = "candidate:2 1 udp 2130706431 10.77.1.2 50001 typ host";
    const RELAY: &str =
        "candidate:3 1 udp 16777215 10.77.0.1 49160 typ relay raddr 10.77.1.2 rport 50001";
    const MDNS: &str = "candidate:4 1 udp 2130706431 1f0e-4c.local 50002 typ host";

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an IP address")
    }

    fn addrs(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn binds_the_lan_address_and_loopback_only_without_one() {
        assert_eq!(
            host_bind_addrs(Some(ip("192.168.1.20"))),
            addrs(&["192.168.1.20:0"])
        );
        assert_eq!(host_bind_addrs(None), addrs(&["127.0.0.1:0"]));
        assert_eq!(
            host_bind_addrs(Some(IpAddr::from([127, 0, 0, 1]))),
            addrs(&["127.0.0.1:0"])
        );
        assert_eq!(
            host_bind_addrs(Some(ip("2001:db8::5"))),
            addrs(&["[2001:db8::5]:0"])
        );
    }

    #[test]
    fn reads_the_address_of_a_candidate() {
        assert_eq!(candidate_ip(LOOP), Some(IpAddr::from([127, 0, 0, 1])));
        assert_eq!(
            candidate_ip(&format!("a={RELAY}")),
            Some(IpAddr::from([10, 77, 0, 1]))
        );
        assert_eq!(candidate_ip(MDNS), None);
        assert_eq!(candidate_ip(""), None);
        assert_eq!(candidate_ip("candidate:1 1 udp"), None);
        assert_eq!(
            candidate_ip("candidate:1 1 udp 1 ::1 5 typ host"),
            Some(IpAddr::from([0, 0, 0, 0, 0, 0, 0, 1]))
        );
    }

    #[test]
    fn loopback_goes_out_only_from_a_loopback_only_peer() {
        let lan_only = addrs(&["10.77.1.2:0"]);
        let both = addrs(&["10.77.1.2:0", "127.0.0.1:0"]);
        let loop_only = addrs(&["127.0.0.1:0"]);
        assert!(!offer_local_candidate(LOOP, &lan_only));
        assert!(!offer_local_candidate(LOOP, &both));
        assert!(offer_local_candidate(LOOP, &loop_only));
        for local in [&lan_only, &both, &loop_only] {
            assert!(offer_local_candidate(LAN, local));
            assert!(offer_local_candidate(RELAY, local));
            assert!(offer_local_candidate(MDNS, local));
        }
        assert!(!offer_local_candidate(
            "candidate:1 1 udp 1 0.0.0.0 9 typ host",
            &lan_only
        ));
    }

    #[test]
    fn tells_relay_candidates_apart() {
        assert!(is_relay_candidate(RELAY));
        assert!(is_relay_candidate(&format!("a={RELAY}")));
        for other in [
            LOOP,
            LAN,
            MDNS,
            "",
            "candidate:5 1 udp 1 10.0.0.1 9 typ srflx raddr 10.77.1.2 rport 5 relay",
        ] {
            assert!(!is_relay_candidate(other), "{other}");
        }
    }

    #[test]
    fn a_partners_loopback_is_tried_only_on_loopback() {
        assert!(!usable_remote_candidate(LOOP, &addrs(&["10.77.2.2:0"])));
        assert!(usable_remote_candidate(LOOP, &addrs(&["127.0.0.1:0"])));
        assert!(usable_remote_candidate(
            LOOP,
            &addrs(&["10.77.2.2:0", "127.0.0.1:0"])
        ));
        // Nothing bound explicitly: no loopback either.
        assert!(!usable_remote_candidate(LOOP, &[]));
        for local in [addrs(&["10.77.2.2:0"]), addrs(&["127.0.0.1:0"])] {
            assert!(usable_remote_candidate(LAN, &local));
            assert!(usable_remote_candidate(RELAY, &local));
            assert!(usable_remote_candidate(MDNS, &local));
            assert!(usable_remote_candidate("", &local));
        }
        assert!(!usable_remote_candidate(
            "candidate:1 1 udp 1 0.0.0.0 9 typ host",
            &addrs(&["127.0.0.1:0"])
        ));
    }
}
