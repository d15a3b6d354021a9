//! A request's headers as one host buffer, read in place: the proxy-wasm map serialization
//! (`u32 count`, `count × (u32 name_len, u32 value_len)`, then `name\0value\0` pairs) parsed
//! into offsets, so the decision reads headers without a host call or an allocation per header.

/// Byte ranges of one header inside the buffer.
#[derive(Debug, Clone, Copy)]
struct Entry {
    name: (usize, usize),
    value: (usize, usize),
}

/// All request headers of one request.
#[derive(Debug, Default)]
pub struct HeaderBlock {
    buf: Vec<u8>,
    entries: Vec<Entry>,
}

fn read_u32(buf: &[u8], at: usize) -> Option<usize> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    let array: [u8; 4] = bytes.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(array)).ok()
}

impl HeaderBlock {
    /// Parses the host serialization; `None` if it is malformed (never trusts the lengths).
    pub fn parse(buf: Vec<u8>) -> Option<HeaderBlock> {
        if buf.is_empty() {
            return Some(HeaderBlock::default());
        }
        let count = read_u32(&buf, 0)?;
        let mut data = count.checked_mul(8)?.checked_add(4)?;
        if data > buf.len() {
            return None;
        }
        let mut entries = Vec::with_capacity(count);
        for i in 0..count {
            let name_len = read_u32(&buf, 4 + i * 8)?;
            let value_len = read_u32(&buf, 8 + i * 8)?;
            let name_end = data.checked_add(name_len)?;
            let value_start = name_end.checked_add(1)?;
            let value_end = value_start.checked_add(value_len)?;
            // Each value is followed by a NUL, so it must end before the buffer does.
            if value_end >= buf.len() {
                return None;
            }
            entries.push(Entry {
                name: (data, name_end),
                value: (value_start, value_end),
            });
            data = value_end.checked_add(1)?;
        }
        Some(HeaderBlock { buf, entries })
    }

    fn slice(&self, range: (usize, usize)) -> &[u8] {
        self.buf.get(range.0..range.1).unwrap_or_default()
    }

    /// The first value of `name` (lowercase, as Envoy stores header names).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|e| self.slice(e.name) == name.as_bytes())
            .map(|e| self.slice(e.value))
    }

    /// Every value of `name`, in arrival order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> {
        self.entries
            .iter()
            .filter(move |e| self.slice(e.name) == name.as_bytes())
            .map(|e| self.slice(e.value))
    }

    /// Whether the header is present.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serialize(pairs: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (n, v) in pairs {
            out.extend_from_slice(&(n.len() as u32).to_le_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        }
        for (n, v) in pairs {
            out.extend_from_slice(n.as_bytes());
            out.push(0);
            out.extend_from_slice(v);
            out.push(0);
        }
        out
    }

    #[test]
    fn reads_pairs_in_place_including_non_utf8_values() {
        let block = HeaderBlock::parse(serialize(&[
            (":authority", b"app.example.com"),
            (":path", b"/x"),
            ("x-bin", &[0xff, 0xfe]),
            ("empty", b""),
        ]))
        .unwrap();
        assert_eq!(block.entries.len(), 4);
        assert_eq!(block.get(":authority"), Some(&b"app.example.com"[..]));
        assert_eq!(block.get("x-bin"), Some(&[0xff, 0xfe][..]));
        assert_eq!(block.get("empty"), Some(&b""[..]));
        assert_eq!(block.get("missing"), None);
    }

    #[test]
    fn every_copy_of_a_header_in_order() {
        let block = HeaderBlock::parse(serialize(&[
            ("cookie", b"a=1"),
            ("x", b"y"),
            ("cookie", b"b=2"),
        ]))
        .unwrap();
        let all: Vec<&[u8]> = block.get_all("cookie").collect();
        assert_eq!(all, [&b"a=1"[..], &b"b=2"[..]]);
        assert_eq!(block.get_all("missing").count(), 0);
    }

    #[test]
    fn empty_buffer_is_no_headers() {
        assert!(HeaderBlock::parse(Vec::new()).unwrap().entries.is_empty());
    }

    #[test]
    fn lying_lengths_are_rejected_not_panicked_on() {
        let mut buf = serialize(&[("a", b"b")]);
        buf[8] = 200; // value length far past the end
        assert!(HeaderBlock::parse(buf).is_none());
        assert!(HeaderBlock::parse(vec![0xff, 0xff, 0xff, 0x7f]).is_none());
        assert!(HeaderBlock::parse(vec![1, 0]).is_none());
        let truncated = serialize(&[("abc", b"def")]);
        assert!(HeaderBlock::parse(truncated[..truncated.len() - 1].to_vec()).is_none());
    }
}
