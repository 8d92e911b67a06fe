//! Counters of the vsock device that operators ask for: packets and bytes each way, what was
//! dropped and why, connections opened and refused. Owned by the single worker thread and
//! read through a snapshot; no atomics on the data path.

/// Counters of one vsock device since it started serving a frontend.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Packets taken from the tx queue that were well formed.
    pub tx_packets: u64,
    /// Payload bytes the guest sent.
    pub tx_bytes: u64,
    /// Packets put on the rx queue.
    pub rx_packets: u64,
    /// Payload bytes sent to the guest.
    pub rx_bytes: u64,
    /// Tx chains dropped as malformed (bad descriptors, lengths, header).
    pub tx_malformed: u64,
    /// Rx buffers the guest offered that were malformed (returned empty).
    pub rx_malformed: u64,
    /// Guest packets dropped for a wrong source or destination CID.
    pub tx_misaddressed: u64,
    /// Resets sent to the guest.
    pub rst_sent: u64,
    /// Connections established or requested, either direction.
    pub conns_opened: u64,
    /// Guest connection requests refused (no host listener, too many connections).
    pub conns_refused: u64,
    /// Host `CONNECT` lines rejected (malformed, too many connections).
    pub host_connects_rejected: u64,
}
