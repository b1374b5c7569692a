//! Cluster membership as etcd computes it at bootstrap: URL normalisation, member and cluster IDs,
//! and the member JSON that goes into the WAL, the v2 store and the `members` bucket.

use sha1::{Digest, Sha1};
use std::collections::BTreeMap;

/// A member of the restored cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub name: String,
    /// Normalised (as Go's `url.URL.String()`) and sorted.
    pub peer_urls: Vec<String>,
}

/// The restored cluster: members in ascending ID order, and the cluster ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub id: u64,
    pub members: Vec<Member>,
}

/// Why a cluster description is refused, in etcdutl's words where it has some.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidCluster(pub String);

fn invalid(msg: impl Into<String>) -> InvalidCluster {
    InvalidCluster(msg.into())
}

/// Parses one peer URL the way etcd's `types.NewURLs` does (Go `url.Parse`, scheme http(s)/unix(s),
/// `host:port`, no path) and returns Go's `URL.String()` of it. Userinfo, queries and fragments,
/// which peer URLs never carry, are refused rather than re-escaped.
pub fn normalize_url(raw: &str) -> Result<String, InvalidCluster> {
    let s = raw.trim();
    let (scheme, rest) = s.split_once("://").ok_or_else(|| {
        invalid(format!(
            "URL {s:?} has no scheme (expected http://host:port)"
        ))
    })?;
    let scheme = scheme.to_ascii_lowercase();
    if !["http", "https", "unix", "unixs"].contains(&scheme.as_str()) {
        return Err(invalid(format!(
            "URL scheme must be http, https, unix, or unixs: {s}"
        )));
    }
    if rest.contains(['/', '?', '#', '@']) {
        return Err(invalid(format!(
            "URL must not contain a path, query, fragment or user: {s}"
        )));
    }
    let port_ok = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    let valid = if let Some(v6) = rest.strip_prefix('[') {
        v6.split_once("]:")
            .is_some_and(|(h, p)| !h.contains(['[', ']']) && port_ok(p))
    } else {
        rest.split_once(':')
            .is_some_and(|(h, p)| !h.contains(['[', ']', ':']) && port_ok(p))
    };
    if !valid
        || !rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~:[]%".contains(&b))
    {
        return Err(invalid(format!(
            "URL address does not have the form \"host:port\": {s}"
        )));
    }
    Ok(format!("{scheme}://{rest}"))
}

/// Parses a comma-separated URL list (`--initial-advertise-peer-urls`) into sorted normalised URLs.
pub fn parse_urls(list: &str) -> Result<Vec<String>, InvalidCluster> {
    let mut urls = list
        .split(',')
        .map(normalize_url)
        .collect::<Result<Vec<_>, _>>()?;
    urls.sort();
    Ok(urls)
}

/// Parses `--initial-cluster` (`name=url,name=url,…`, a name may repeat) like etcd's `types.NewURLsMap`.
pub fn parse_initial_cluster(s: &str) -> Result<BTreeMap<String, Vec<String>>, InvalidCluster> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for item in s.split(',').filter(|i| !i.is_empty()) {
        let (name, url) = item.split_once('=').unwrap_or((item, ""));
        map.entry(name.to_string())
            .or_default()
            .push(normalize_url(url)?);
    }
    for urls in map.values_mut() {
        urls.sort();
    }
    Ok(map)
}

/// Member ID: the first 8 bytes (big-endian) of sha1(sorted peer URLs joined ‖ cluster token).
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut sorted: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    let mut h = Sha1::new();
    for u in sorted {
        h.update(u.as_bytes());
    }
    h.update(token.as_bytes());
    u64::from_be_bytes(h.finalize()[..8].try_into().expect("sha1 is 20 bytes"))
}

/// Cluster ID: the first 8 bytes of sha1 over the member IDs (ascending, big-endian).
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut h = Sha1::new();
    for id in ids {
        h.update(id.to_be_bytes());
    }
    u64::from_be_bytes(h.finalize()[..8].try_into().expect("sha1 is 20 bytes"))
}

impl Cluster {
    /// Builds the cluster from `--initial-cluster` and checks it against this member's name and
    /// advertised peer URLs, as etcd's `VerifyBootstrap` does. The advertised URLs are compared as
    /// normalised strings: etcd would also resolve host names, which a recovery tool must not need.
    pub fn bootstrap(
        initial_cluster: &str,
        token: &str,
        name: &str,
        advertise_peer_urls: &str,
    ) -> Result<Cluster, InvalidCluster> {
        let map = parse_initial_cluster(initial_cluster)?;
        let advertised = parse_urls(advertise_peer_urls)?;
        let Some(mine) = map.get(name) else {
            return Err(invalid(format!(
                "couldn't find local name {name:?} in the initial cluster configuration"
            )));
        };
        if *mine != advertised {
            return Err(invalid(format!(
                "--initial-cluster has {name}={} but --initial-advertise-peer-urls is {}; they must list the same URLs",
                mine.join(","),
                advertised.join(",")
            )));
        }
        let mut all: Vec<&String> = map.values().flatten().collect();
        all.sort();
        if let Some(w) = all.windows(2).find(|w| w[0] == w[1]) {
            return Err(invalid(format!(
                "initial cluster {initial_cluster} has duplicate url {}",
                w[0]
            )));
        }
        let mut members: Vec<Member> = map
            .into_iter()
            .map(|(name, peer_urls)| Member {
                id: member_id(&peer_urls, token),
                name,
                peer_urls,
            })
            .collect();
        members.sort_by_key(|m| m.id);
        if let Some(w) = members.windows(2).find(|w| w[0].id == w[1].id) {
            return Err(invalid(format!(
                "member {} and {} have identical IDs {:x}",
                w[0].name, w[1].name, w[0].id
            )));
        }
        if members.first().is_some_and(|m| m.id == 0) {
            return Err(invalid("cannot use 0 as member id"));
        }
        let id = cluster_id(&members.iter().map(|m| m.id).collect::<Vec<_>>());
        Ok(Cluster { id, members })
    }

    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }
}

/// Appends `s` as a JSON string the way Go's `encoding/json` writes it (HTML-safe escapes included),
/// so that JSON embedded in the WAL and `.snap` is byte-identical to etcd's.
pub fn go_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn go_json_string_array(out: &mut String, items: &[String]) {
    out.push('[');
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        go_json_string(out, s);
    }
    out.push(']');
}

impl Member {
    /// `json.Marshal(membership.Member)`: `{"id":…,"peerURLs":[…],"name":…}` (name omitted when empty).
    pub fn json(&self) -> String {
        let mut s = format!("{{\"id\":{},\"peerURLs\":", self.id);
        go_json_string_array(&mut s, &self.peer_urls);
        if !self.name.is_empty() {
            s.push_str(",\"name\":");
            go_json_string(&mut s, &self.name);
        }
        s.push('}');
        s
    }

    /// `json.Marshal(RaftAttributes)`: `{"peerURLs":[…]}`.
    pub fn raft_attributes_json(&self) -> String {
        let mut s = String::from("{\"peerURLs\":");
        go_json_string_array(&mut s, &self.peer_urls);
        s.push('}');
        s
    }

    /// The member's key in the `members` bucket and the v2 store: lowercase hex, no padding.
    pub fn hex_id(&self) -> String {
        format!("{:x}", self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_match_etcd() {
        let m = member_id(&["http://127.0.0.1:23801".to_string()], "src-token");
        assert_eq!(format!("{m:x}"), "55c38ce3197334ce");
        assert_eq!(format!("{:x}", cluster_id(&[m])), "892386e6ba1a38db");
    }

    #[test]
    fn urls_normalise_like_go() {
        assert_eq!(
            normalize_url(" HTTP://[fd00::3]:2380").unwrap(),
            "http://[fd00::3]:2380"
        );
        assert!(normalize_url("http://10.0.0.1:2380/x").is_err());
        assert!(normalize_url("http://10.0.0.1").is_err());
        assert!(normalize_url("ftp://10.0.0.1:1").is_err());
    }

    #[test]
    fn bootstrap_validates() {
        let c = "a=http://h1:2380,b=http://h2:2380";
        assert!(Cluster::bootstrap(c, "t", "a", "http://h1:2380").is_ok());
        assert!(Cluster::bootstrap(c, "t", "x", "http://h1:2380").is_err());
        assert!(Cluster::bootstrap(c, "t", "a", "http://h2:2380").is_err());
        assert!(Cluster::bootstrap(
            "a=http://h1:2380,b=http://h1:2380",
            "t",
            "a",
            "http://h1:2380"
        )
        .is_err());
    }

    #[test]
    fn json_escapes_like_go() {
        let mut s = String::new();
        go_json_string(&mut s, "a<b>&\"\u{1}");
        assert_eq!(s, r#""a\u003cb\u003e\u0026\"\u0001""#);
    }
}
