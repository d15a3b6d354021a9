//! The host calls veer makes, each returning a `Result` instead of panicking.
//!
//! The proxy-wasm SDK's convenience methods `unwrap()` host results and `panic!` on statuses
//! they do not expect; in a gateway a panic traps the VM and breaks every later request on that
//! worker. These wrappers call the ABI directly and turn every non-OK status into an error the
//! caller can count and ignore. The SDK is still used for the context dispatcher, logging and
//! `dispatch_http_call` (which must register the callout with the dispatcher).
//!
//! Outside wasm32 (host-side `cargo test`/`clippy`) the imports do not exist; the same functions
//! then return `HostError`, so the pure parts of the crate stay testable natively.

// Outside wasm32 the ABI paths are compiled out, leaving their helpers unused there.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

use std::fmt;

/// A host call that did not succeed, with the ABI status code (0 is never stored here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostError {
    pub call: &'static str,
    pub status: u32,
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "host call {} failed with status {}",
            self.call, self.status
        )
    }
}

pub type HostResult<T> = Result<T, HostError>;

/// proxy-wasm ABI map types used here (names as in the ABI).
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum MapType {
    RequestHeaders = 0,
    ResponseHeaders = 2,
    HttpCallResponseHeaders = 6,
}

/// proxy-wasm ABI buffer types used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum BufferType {
    HttpCallResponseBody = 4,
    PluginConfiguration = 7,
}

/// proxy-wasm ABI metric types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum MetricType {
    Counter = 0,
    Gauge = 1,
    Histogram = 2,
}

const STATUS_OK: u32 = 0;
const STATUS_NOT_FOUND: u32 = 1;
const STATUS_EMPTY: u32 = 7;
const STATUS_CAS_MISMATCH: u32 = 8;

/// Outcome of a compare-and-swap write to shared data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasWrite {
    Written,
    /// Someone else wrote the key since our read.
    Conflict,
}

#[cfg(target_arch = "wasm32")]
mod abi {
    #[link(wasm_import_module = "env")]
    extern "C" {
        pub fn proxy_get_header_map_pairs(
            map_type: u32,
            return_map_data: *mut *mut u8,
            return_map_size: *mut usize,
        ) -> u32;
        pub fn proxy_get_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
        ) -> u32;
        pub fn proxy_replace_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_add_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_remove_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
        ) -> u32;
        pub fn proxy_get_buffer_bytes(
            buffer_type: u32,
            start: usize,
            max_size: usize,
            return_buffer_data: *mut *mut u8,
            return_buffer_size: *mut usize,
        ) -> u32;
        pub fn proxy_get_property(
            path_data: *const u8,
            path_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
        ) -> u32;
        pub fn proxy_get_shared_data(
            key_data: *const u8,
            key_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
            return_cas: *mut u32,
        ) -> u32;
        pub fn proxy_set_shared_data(
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
            cas: u32,
        ) -> u32;
        pub fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
        pub fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
        pub fn proxy_define_metric(
            metric_type: u32,
            name_data: *const u8,
            name_size: usize,
            return_id: *mut u32,
        ) -> u32;
        pub fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
        pub fn proxy_register_shared_queue(
            name_data: *const u8,
            name_size: usize,
            return_id: *mut u32,
        ) -> u32;
        pub fn proxy_enqueue_shared_queue(
            queue_id: u32,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_dequeue_shared_queue(
            queue_id: u32,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
        ) -> u32;
        pub fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    }

    // Envoy (proxy-wasm-cpp-host) provides these WASI functions to every module, whatever its
    // target; `vm_config.environment_variables` is what `environ_get` returns.
    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    extern "C" {
        pub fn environ_sizes_get(count: *mut usize, buf_size: *mut usize) -> u16;
        pub fn environ_get(environ: *mut *mut u8, environ_buf: *mut u8) -> u16;
        pub fn random_get(buf: *mut u8, buf_len: usize) -> u16;
    }
}

/// Takes ownership of a buffer the host allocated through the module's `malloc` export
/// (the SDK's allocator hands out exactly `size` bytes, so capacity == length).
#[cfg(target_arch = "wasm32")]
fn host_bytes(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() || size == 0 {
        return Vec::new();
    }
    // SAFETY: the host filled `size` bytes it obtained from our allocator (`malloc`
    // -> `proxy_on_memory_allocate`, a boxed slice of exactly `size` bytes).
    unsafe { Vec::from_raw_parts(data, size, size) }
}

fn check(call: &'static str, status: u32) -> HostResult<()> {
    if status == STATUS_OK {
        Ok(())
    } else {
        Err(HostError { call, status })
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn unavailable<T>(call: &'static str) -> HostResult<T> {
    Err(HostError {
        call,
        status: u32::MAX,
    })
}

/// All headers of a map in their ABI serialization, in one host call.
pub fn header_pairs(map: MapType) -> HostResult<Vec<u8>> {
    #[cfg(target_arch = "wasm32")]
    {
        let mut data = std::ptr::null_mut();
        let mut size = 0usize;
        // SAFETY: out-pointers are valid locals; the host writes a buffer it allocated via us.
        let status = unsafe { abi::proxy_get_header_map_pairs(map as u32, &mut data, &mut size) };
        check("get_header_map_pairs", status)?;
        Ok(host_bytes(data, size))
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = map;
        unavailable("get_header_map_pairs")
    }
}

/// One header's value; `None` when absent.
pub fn header_value(map: MapType, name: &str) -> HostResult<Option<Vec<u8>>> {
    #[cfg(target_arch = "wasm32")]
    {
        let mut data = std::ptr::null_mut();
        let mut size = 0usize;
        // SAFETY: name is a live slice; out-pointers are valid locals.
        let status = unsafe {
            abi::proxy_get_header_map_value(
                map as u32,
                name.as_ptr(),
                name.len(),
                &mut data,
                &mut size,
            )
        };
        if status == STATUS_NOT_FOUND {
            return Ok(None);
        }
        check("get_header_map_value", status)?;
        Ok(Some(host_bytes(data, size)))
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = (map, name);
        unavailable("get_header_map_value")
    }
}

/// Sets a header, replacing every existing value of it.
pub fn replace_header(map: MapType, name: &str, value: &[u8]) -> HostResult<()> {
    #[cfg(target_arch = "wasm32")]
    {
        // SAFETY: both slices are live for the call.
        let status = unsafe {
            abi::proxy_replace_header_map_value(
                map as u32,
                name.as_ptr(),
                name.len(),
                value.as_ptr(),
                value.len(),
            )
        };
        check("replace_header_map_value", status)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = (map, name, value);
        unavailable("replace_header_map_value")
    }
}

/// Adds a header value next to any existing ones (Set-Cookie must not clobber the upstream's).
pub fn add_header(map: MapType, name: &str, value: &[u8]) -> HostResult<()> {
    #[cfg(target_arch = "wasm32")]
    {
        // SAFETY: both slices are live for the call.
        let status = unsafe {
            abi::proxy_add_header_map_value(
                map as u32,
                name.as_ptr(),
                name.len(),
                value.as_ptr(),
                value.len(),
            )
        };
        check("add_header_map_value", status)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = (map, name, value);
        unavailable("add_header_map_value")
    }
}

/// Removes every value of a header.
pub fn remove_header(map: MapType, name: &str) -> HostResult<()> {
    #[cfg(target_arch = "wasm32")]
    {
        // SAFETY: name is live for the call.
        let status =
            unsafe { abi::proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) };
        check("remove_header_map_value", status)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = (map, name);
        unavailable("remove_header_map_value")
    }
}

/// A whole host buffer (plugin configuration, HTTP call response body).
pub fn buffer(kind: BufferType, max_size: usize) -> HostResult<Vec<u8>> {
    #[cfg(target_arch = "wasm32")]
    {
        let mut data = std::ptr::null_mut();
        let mut size = 0usize;
        // SAFETY: out-pointers are valid locals.
        let status =
            unsafe { abi::proxy_get_buffer_bytes(kind as u32, 0, max_size, &mut data, &mut size) };
        if status == STATUS_NOT_FOUND {
            return Ok(Vec::new());
        }
        check("get_buffer_bytes", status)?;
        Ok(host_bytes(data, size))
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = (kind, max_size);
        unavailable("get_buffer_bytes")
    }
}

/// A host property such as `node.id` or `plugin_name`; `None` when unset.
pub fn property(path: &[&str]) -> HostResult<Option<Vec<u8>>> {
    // The ABI takes the path segments joined by NUL bytes.
    let mut serialized = Vec::new();
    for (i, segment) in path.iter().enumerate() {
        if i > 0 {
            serialized.push(0);
        }
        serialized.extend_from_slice(segment.as_bytes());
    }
    #[cfg(target_arch = "wasm32")]
    {
        let mut data = std::ptr::null_mut();
        let mut size = 0usize;
        // SAFETY: serialized is live; out-pointers are valid locals.
        let status = unsafe {
            abi::proxy_get_property(serialized.as_ptr(), serialized.len(), &mut data, &mut size)
        };
        if status == STATUS_NOT_FOUND {
            return Ok(None);
        }
        check("get_property", status)?;
        Ok(Some(host_bytes(data, size)))
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = serialized;
        unavailable("get_property")
    }
}

/// A shared-data value and its CAS token. An absent key is `(None, 0)`.
pub fn shared_data(key: &str) -> HostResult<(Option<Vec<u8>>, u32)> {
    #[cfg(target_arch = "wasm32")]
    {
        let mut data = std::ptr::null_mut();
        let mut size = 0usize;
        let mut cas = 0u32;
        // SAFETY: key is live; out-pointers are valid locals.
        let status = unsafe {
            abi::proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas)
        };
        if status == STATUS_NOT_FOUND {
            return Ok((None, 0));
        }
        check("get_shared_data", status)?;
        Ok((Some(host_bytes(data, size)), cas))
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = key;
        unavailable("get_shared_data")
    }
}

/// Writes shared data. `cas` 0 writes unconditionally; otherwise the write only happens if
/// nobody wrote the key since the read that returned `cas`.
pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> HostResult<CasWrite> {
    #[cfg(target_arch = "wasm32")]
    {
        // SAFETY: key and value are live for the call.
        let status = unsafe {
            abi::proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
        };
        if status == STATUS_CAS_MISMATCH {
            return Ok(CasWrite::Conflict);
        }
        check("set_shared_data", status)?;
        Ok(CasWrite::Written)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = (key, value, cas);
        unavailable("set_shared_data")
    }
}

/// Registers (or re-registers) a shared queue of this VM's `vm_id` for the calling root
/// context and returns its token. Registering a name again keeps the token and moves
/// `on_queue_ready` to the caller's context and thread.
pub fn register_queue(name: &str) -> HostResult<u32> {
    #[cfg(target_arch = "wasm32")]
    {
        let mut token = 0u32;
        // SAFETY: name is live; out-pointer is a valid local.
        let status =
            unsafe { abi::proxy_register_shared_queue(name.as_ptr(), name.len(), &mut token) };
        check("register_shared_queue", status)?;
        Ok(token)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = name;
        unavailable("register_shared_queue")
    }
}

/// Outcome of an enqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Queued; the host calls `on_queue_ready` on the registering context's thread.
    Queued,
    /// No queue with that token (its VM is gone).
    NoSuchQueue,
}

/// Appends `value` to the queue with `token`.
pub fn enqueue(token: u32, value: &[u8]) -> HostResult<Enqueued> {
    #[cfg(target_arch = "wasm32")]
    {
        // SAFETY: value is live for the call.
        let status = unsafe { abi::proxy_enqueue_shared_queue(token, value.as_ptr(), value.len()) };
        if status == STATUS_NOT_FOUND {
            return Ok(Enqueued::NoSuchQueue);
        }
        check("enqueue_shared_queue", status)?;
        Ok(Enqueued::Queued)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = (token, value);
        unavailable("enqueue_shared_queue")
    }
}

/// Takes the oldest item of the queue with `token`; `None` when it is empty or gone.
pub fn dequeue(token: u32) -> HostResult<Option<Vec<u8>>> {
    #[cfg(target_arch = "wasm32")]
    {
        let mut data = std::ptr::null_mut();
        let mut size = 0usize;
        // SAFETY: out-pointers are valid locals.
        let status = unsafe { abi::proxy_dequeue_shared_queue(token, &mut data, &mut size) };
        if status == STATUS_EMPTY || status == STATUS_NOT_FOUND {
            return Ok(None);
        }
        check("dequeue_shared_queue", status)?;
        Ok(Some(host_bytes(data, size)))
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = token;
        unavailable("dequeue_shared_queue")
    }
}

/// Wall-clock time in nanoseconds since the Unix epoch, from the host.
pub fn now_nanos() -> HostResult<u64> {
    #[cfg(target_arch = "wasm32")]
    {
        let mut nanos = 0u64;
        // SAFETY: out-pointer is a valid local.
        let status = unsafe { abi::proxy_get_current_time_nanoseconds(&mut nanos) };
        check("get_current_time_nanoseconds", status)?;
        Ok(nanos)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        unavailable("get_current_time_nanoseconds")
    }
}

/// Arms this root context's `on_tick`.
pub fn set_tick_period_ms(period_ms: u32) -> HostResult<()> {
    #[cfg(target_arch = "wasm32")]
    {
        // SAFETY: plain value call.
        let status = unsafe { abi::proxy_set_tick_period_milliseconds(period_ms) };
        check("set_tick_period_milliseconds", status)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = period_ms;
        unavailable("set_tick_period_milliseconds")
    }
}

/// Defines (or looks up) a metric; Envoy names it `wasmcustom.<name>`.
pub fn define_metric(kind: MetricType, name: &str) -> HostResult<u32> {
    #[cfg(target_arch = "wasm32")]
    {
        let mut id = 0u32;
        // SAFETY: name is live; out-pointer is a valid local.
        let status =
            unsafe { abi::proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) };
        check("define_metric", status)?;
        Ok(id)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = (kind, name);
        unavailable("define_metric")
    }
}

pub fn increment_metric(id: u32, by: i64) -> HostResult<()> {
    #[cfg(target_arch = "wasm32")]
    {
        // SAFETY: plain value call.
        let status = unsafe { abi::proxy_increment_metric(id, by) };
        check("increment_metric", status)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = (id, by);
        unavailable("increment_metric")
    }
}

/// Sets a gauge or records one histogram sample.
pub fn record_metric(id: u32, value: u64) -> HostResult<()> {
    #[cfg(target_arch = "wasm32")]
    {
        // SAFETY: plain value call.
        let status = unsafe { abi::proxy_record_metric(id, value) };
        check("record_metric", status)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = (id, value);
        unavailable("record_metric")
    }
}

/// The VM's environment (`vm_config.environment_variables`), as `NAME=value` entries.
pub fn environment() -> HostResult<Vec<Vec<u8>>> {
    #[cfg(target_arch = "wasm32")]
    {
        let mut count = 0usize;
        let mut buf_size = 0usize;
        // SAFETY: out-pointers are valid locals.
        let errno = unsafe { abi::environ_sizes_get(&mut count, &mut buf_size) };
        check("environ_sizes_get", u32::from(errno))?;
        if count == 0 {
            return Ok(Vec::new());
        }
        let mut pointers: Vec<*mut u8> = vec![std::ptr::null_mut(); count];
        let mut buf = vec![0u8; buf_size];
        // SAFETY: WASI writes `count` pointers into `pointers` and `buf_size` bytes into
        // `buf`, exactly the sizes environ_sizes_get reported.
        let errno = unsafe { abi::environ_get(pointers.as_mut_ptr(), buf.as_mut_ptr()) };
        check("environ_get", u32::from(errno))?;
        // Entries are NUL-terminated and laid out back to back in `buf`.
        Ok(buf
            .split(|b| *b == 0)
            .filter(|entry| !entry.is_empty())
            .map(<[u8]>::to_vec)
            .collect())
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        unavailable("environ_get")
    }
}

/// `name`'s value in the VM environment, if set.
pub fn env_var(name: &str) -> HostResult<Option<String>> {
    let entries = environment()?;
    Ok(entries.iter().find_map(|entry| {
        let rest = entry.strip_prefix(name.as_bytes())?;
        let value = rest.strip_prefix(b"=")?;
        String::from_utf8(value.to_vec()).ok()
    }))
}

/// 64 bits from the host's random source.
pub fn random_u64() -> HostResult<u64> {
    #[cfg(target_arch = "wasm32")]
    {
        let mut bytes = [0u8; 8];
        // SAFETY: writes exactly 8 bytes into a local array.
        let errno = unsafe { abi::random_get(bytes.as_mut_ptr(), bytes.len()) };
        check("random_get", u32::from(errno))?;
        Ok(u64::from_le_bytes(bytes))
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        unavailable("random_get")
    }
}
