//! The first WAL segment of a restored member, as etcdutl 3.5 writes it.

use super::member::Cluster;
use super::proto::{conf_state, Msg};

/// etcd preallocates each segment to `SegmentSizeBytes` (64,000,000, not 64 MiB).
pub const SEGMENT_SIZE: u64 = 64_000_000;
pub const SEGMENT_NAME: &str = "0000000000000000-0000000000000000.wal";

const METADATA: u64 = 1;
const ENTRY: u64 = 2;
const STATE: u64 = 3;
const CRC: u64 = 4;
const SNAPSHOT: u64 = 5;

/// Frames records: length (top byte flags the padding), `walpb.Record`, zero padding to 8 bytes,
/// with CRC-32C chained over every record's data since the segment start.
struct Encoder {
    out: Vec<u8>,
    crc: u32,
}

impl Encoder {
    fn record(&mut self, kind: u64, data: Option<&[u8]>) {
        if let Some(d) = data {
            self.crc = crc32c::crc32c_append(self.crc, d);
        }
        let mut rec = Msg::new().uint(1, kind).uint(2, u64::from(self.crc));
        if let Some(d) = data {
            rec = rec.bytes(3, d);
        }
        let rec = rec.finish();
        let pad = (8 - rec.len() % 8) % 8;
        let mut len = rec.len() as u64;
        if pad > 0 {
            len |= (0x80 | pad as u64) << 56;
        }
        self.out.extend_from_slice(&len.to_le_bytes());
        self.out.extend_from_slice(&rec);
        self.out.resize(self.out.len() + pad, 0);
    }
}

/// The records of the segment (the file is this, then zeros up to [`SEGMENT_SIZE`]):
/// metadata, an empty snapshot marker, one AddNode conf change per member, the hard state, and a
/// snapshot marker at index N with the voters. `me` is this member's ID.
pub fn segment(cluster: &Cluster, me: u64) -> Vec<u8> {
    let mut e = Encoder {
        out: Vec::with_capacity(1024),
        crc: 0,
    };
    e.record(CRC, None);
    e.record(
        METADATA,
        Some(&Msg::new().uint(1, me).uint(2, cluster.id).finish()),
    );
    e.record(SNAPSHOT, Some(&Msg::new().uint(1, 0).uint(2, 0).finish()));
    for (i, m) in cluster.members.iter().enumerate() {
        let change = Msg::new()
            .uint(1, 0)
            .uint(2, 0)
            .uint(3, m.id)
            .bytes(4, m.json().as_bytes())
            .finish();
        let entry = Msg::new()
            .uint(1, 1)
            .uint(2, 1)
            .uint(3, i as u64 + 1)
            .bytes(4, &change)
            .finish();
        e.record(ENTRY, Some(&entry));
    }
    let n = cluster.members.len() as u64;
    let vote = cluster.members[0].id;
    e.record(
        STATE,
        Some(&Msg::new().uint(1, 1).uint(2, vote).uint(3, n).finish()),
    );
    let voters: Vec<u64> = cluster.members.iter().map(|m| m.id).collect();
    e.record(
        SNAPSHOT,
        Some(
            &Msg::new()
                .uint(1, n)
                .uint(2, 1)
                .bytes(3, &conf_state(&voters))
                .finish(),
        ),
    );
    e.out
}
