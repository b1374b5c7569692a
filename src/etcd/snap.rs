//! The `.snap` file of a restored member: etcd's v2 store (which still carries membership for
//! etcd ≤ 3.5) holding one `raftAttributes` node per member, wrapped in a raft snapshot at index N.

use super::member::{go_json_string, Cluster};
use super::proto::{conf_state, Msg};

/// The v2 store's event history is a ring of this many events, all serialised.
const EVENT_HISTORY: usize = 1000;
const NO_EXPIRY: &str = r#""ExpireTime":"0001-01-01T00:00:00Z""#;

pub fn file_name(index: u64) -> String {
    format!("{:016x}-{index:016x}.snap", 1)
}

/// One v2 store node as Go's `json.Marshal` writes it; `children` is already-serialised JSON.
fn node(path: &str, index: usize, value: &str, children: &str) -> String {
    let mut s = String::from(r#"{"Path":"#);
    go_json_string(&mut s, path);
    s.push_str(&format!(
        r#","CreatedIndex":{index},"ModifiedIndex":{index},{NO_EXPIRY},"Value":"#
    ));
    go_json_string(&mut s, value);
    s.push_str(&format!(r#","Children":{children}}}"#));
    s
}

/// `json.Marshal(v2store)` after adding each member's raftAttributes, in member-ID order.
/// Requires fewer than 1000 members (the event ring never wraps).
pub fn v2_store_json(cluster: &Cluster) -> String {
    let n = cluster.members.len();
    // Go sorts map keys as strings, and unpadded hex does not sort like the numbers.
    let mut by_key: Vec<(String, usize)> = cluster
        .members
        .iter()
        .enumerate()
        .map(|(i, m)| (m.hex_id(), i + 1))
        .collect();
    by_key.sort();
    let members: Vec<String> = by_key
        .iter()
        .map(|(hex, index)| {
            let m = &cluster.members[index - 1];
            let dir = format!("/0/members/{hex}");
            let attrs = node(
                &format!("{dir}/raftAttributes"),
                *index,
                &m.raft_attributes_json(),
                "null",
            );
            let mut key = String::new();
            go_json_string(&mut key, hex);
            format!(
                "{key}:{}",
                node(
                    &dir,
                    *index,
                    "",
                    &format!(r#"{{"raftAttributes":{attrs}}}"#)
                )
            )
        })
        .collect();
    let members_dir = node("/0/members", 1, "", &format!("{{{}}}", members.join(",")));
    let zero = node("/0", 0, "", &format!(r#"{{"members":{members_dir}}}"#));
    let one = node("/1", 0, "", "{}");
    let root = node("/", 0, "", &format!(r#"{{"0":{zero},"1":{one}}}"#));

    let mut events: Vec<String> = cluster
        .members
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut s = String::from(r#"{"action":"create","node":{"key":"#);
            go_json_string(&mut s, &format!("/0/members/{}/raftAttributes", m.hex_id()));
            s.push_str(r#","value":"#);
            go_json_string(&mut s, &m.raft_attributes_json());
            s.push_str(&format!(
                r#","modifiedIndex":{0},"createdIndex":{0}}}}}"#,
                i + 1
            ));
            s
        })
        .collect();
    events.resize(EVENT_HISTORY, "null".to_string());
    let stats = [
        "getsSuccess",
        "getsFail",
        "setsSuccess",
        "setsFail",
        "deleteSuccess",
        "deleteFail",
        "updateSuccess",
        "updateFail",
        "createSuccess",
        "createFail",
        "compareAndSwapSuccess",
        "compareAndSwapFail",
        "compareAndDeleteSuccess",
        "compareAndDeleteFail",
        "expireCount",
        "watchers",
    ]
    .map(|k| format!(r#""{k}":{}"#, if k == "createSuccess" { n } else { 0 }))
    .join(",");
    format!(
        concat!(
            r#"{{"Root":{},"WatcherHub":{{"EventHistory":{{"Queue":{{"Events":[{}],"Size":{n},"Front":0,"Back":{n},"#,
            r#""Capacity":{cap}}},"StartIndex":1,"LastIndex":{n}}}}},"CurrentIndex":{n},"Stats":{{{}}},"CurrentVersion":2}}"#
        ),
        root,
        events.join(","),
        stats,
        n = n,
        cap = EVENT_HISTORY
    )
}

/// The `.snap` file: `snappb.Snapshot{crc, raftpb.Snapshot{v2 store, metadata{voters, index N, term 1}}}`.
pub fn snap_file(cluster: &Cluster) -> Vec<u8> {
    let voters: Vec<u64> = cluster.members.iter().map(|m| m.id).collect();
    let metadata = Msg::new()
        .bytes(1, &conf_state(&voters))
        .uint(2, voters.len() as u64)
        .uint(3, 1)
        .finish();
    let data = Msg::new()
        .bytes(1, v2_store_json(cluster).as_bytes())
        .bytes(2, &metadata)
        .finish();
    Msg::new()
        .uint(1, u64::from(crc32c::crc32c(&data)))
        .bytes(2, &data)
        .finish()
}
