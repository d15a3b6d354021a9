//! The request as the decision sees it: a few pseudo-headers and header lookup by lowercase
//! name, all as bytes. The wasm edge fetches every header in one host call into an
//! `OwnedRequest`; tests build one directly.

/// Read access to one request's headers. Values are bytes: non-UTF-8 is possible and must
/// never panic (string conditions simply do not match it).
pub trait RequestView {
    /// The first value of the header `lowercase_name`, which callers pass already lowercased.
    fn header(&self, lowercase_name: &str) -> Option<&[u8]>;
    /// Every value of the header, in arrival order. Used for `Cookie`: HTTP/1 clients may
    /// send it several times (RFC 6265 says once), and the copies are read as one list.
    fn header_values<'a>(&'a self, lowercase_name: &'a str) -> impl Iterator<Item = &'a [u8]>;
    /// `:authority` (empty when missing).
    fn authority(&self) -> &[u8];
    /// `:path`, query string included (empty when missing).
    fn path(&self) -> &[u8];
    /// `:method` (empty when missing).
    fn method(&self) -> &[u8];
}

/// Headers as (name, value) byte pairs, in arrival order; pseudo-headers included. Names
/// are lowercased once on construction (Envoy's already are), so lookups compare bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnedRequest {
    headers: Vec<(Vec<u8>, Vec<u8>)>,
}

impl OwnedRequest {
    /// Takes the pairs, lowercasing the names in place (no copy).
    pub fn from_pairs<N, V, I>(pairs: I) -> Self
    where
        N: Into<Vec<u8>>,
        V: Into<Vec<u8>>,
        I: IntoIterator<Item = (N, V)>,
    {
        OwnedRequest {
            headers: pairs
                .into_iter()
                .map(|(n, v)| {
                    let mut n: Vec<u8> = n.into();
                    n.make_ascii_lowercase();
                    (n, v.into())
                })
                .collect(),
        }
    }

    /// A request with `:method`, `:authority` and `:path` set; add headers with `with_header`.
    pub fn new(method: &str, authority: &str, path: &str) -> Self {
        OwnedRequest::from_pairs([
            (":method", method),
            (":authority", authority),
            (":path", path),
        ])
    }

    /// Appends a header (builder style, for tests and the edge).
    pub fn with_header(mut self, name: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        let mut name: Vec<u8> = name.into();
        name.make_ascii_lowercase();
        self.headers.push((name, value.into()));
        self
    }

    pub fn headers(&self) -> &[(Vec<u8>, Vec<u8>)] {
        &self.headers
    }

    fn pseudo(&self, name: &str) -> &[u8] {
        self.header(name).unwrap_or_default()
    }
}

impl RequestView for OwnedRequest {
    fn header(&self, lowercase_name: &str) -> Option<&[u8]> {
        let want = lowercase_name.as_bytes();
        self.headers
            .iter()
            .find(|(n, _)| n.as_slice() == want)
            .map(|(_, v)| v.as_slice())
    }
    fn header_values<'a>(&'a self, lowercase_name: &'a str) -> impl Iterator<Item = &'a [u8]> {
        let want = lowercase_name.as_bytes();
        self.headers
            .iter()
            .filter(move |(n, _)| n.as_slice() == want)
            .map(|(_, v)| v.as_slice())
    }
    fn authority(&self) -> &[u8] {
        self.pseudo(":authority")
    }
    fn path(&self) -> &[u8] {
        self.pseudo(":path")
    }
    fn method(&self) -> &[u8] {
        self.pseudo(":method")
    }
}
