//! The only modules that speak to the network: the signaling WebSocket and the WebRTC
//! peer connection.

pub mod assembler;
pub mod candidates;
pub mod gather;
pub mod keyframe;
pub mod peer;
mod receive;
pub mod signaling;

/// This machine's address on the local network (the interface a default route would
/// use), found without sending anything: connecting a UDP socket only picks a route.
pub fn lan_ip() -> Option<std::net::IpAddr> {
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    sock.connect("192.0.2.1:9").ok()?;
    let ip = sock.local_addr().ok()?.ip();
    (!ip.is_unspecified() && !ip.is_loopback()).then_some(ip)
}
