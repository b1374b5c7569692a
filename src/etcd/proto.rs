//! The few protobuf encodings the WAL and `.snap` need, written as gogoproto does for etcd's
//! `nullable=false` proto2 messages: scalar fields always present (even 0), fields in number order,
//! repeated integers unpacked.

pub struct Msg(pub Vec<u8>);

impl Msg {
    pub fn new() -> Self {
        Msg(Vec::new())
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    /// A varint field (wire type 0).
    pub fn uint(mut self, field: u32, v: u64) -> Self {
        self.varint(u64::from(field) << 3);
        self.varint(v);
        self
    }

    /// A length-delimited field (wire type 2).
    pub fn bytes(mut self, field: u32, v: &[u8]) -> Self {
        self.varint((u64::from(field) << 3) | 2);
        self.varint(v.len() as u64);
        self.0.extend_from_slice(v);
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.0
    }
}

/// `raftpb.ConfState{voters: ids}` (learners and joint-consensus fields empty; `auto_leave` false).
pub fn conf_state(voters: &[u64]) -> Vec<u8> {
    voters
        .iter()
        .fold(Msg::new(), |m, &id| m.uint(1, id))
        .uint(5, 0)
        .finish()
}
