//! The live table in Envoy shared data, where the poller leaves it for every worker.
//!
//! Keys are `veer.<plugin name>.{lease,state,table,workers}`: Istio runs all WasmPlugins of a proxy in
//! one `vm_id`, so the plugin name keeps two plugins' tables apart. `state` is small
//! (`<generation> <confirmed at, ms>`), so each worker's tick reads only it, and reads the table
//! itself only when the generation moved.

use crate::host::{self, CasWrite, HostResult};

/// The shared-data keys of one plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedKeys {
    pub lease: String,
    pub state: String,
    pub table: String,
    /// The registry of notice queues (`notify`).
    pub workers: String,
    prefix: String,
}

impl SharedKeys {
    pub fn for_plugin(plugin: &str) -> SharedKeys {
        SharedKeys {
            lease: format!("veer.{plugin}.lease"),
            state: format!("veer.{plugin}.state"),
            table: format!("veer.{plugin}.table"),
            workers: format!("veer.{plugin}.workers"),
            prefix: format!("veer.{plugin}"),
        }
    }

    /// The notice queue of the root context with seed `me` (shared queues are named within
    /// the VM's `vm_id`, which Istio shares among plugins, so the plugin name is part of it).
    pub fn queue(&self, me: u64) -> String {
        format!("{}.notify.{me:016x}", self.prefix)
    }
}

/// The generation the poller last stored, and when the controller last confirmed it
/// (a 200 or a 304).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableState {
    pub generation: u64,
    pub confirmed_ms: u64,
}

impl TableState {
    pub fn encode(&self) -> String {
        format!("{} {}", self.generation, self.confirmed_ms)
    }

    pub fn decode(bytes: &[u8]) -> Option<TableState> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (generation, confirmed) = text.split_once(' ')?;
        Some(TableState {
            generation: generation.parse().ok()?,
            confirmed_ms: confirmed.parse().ok()?,
        })
    }
}

/// The stored state, if any, with its CAS token.
pub fn read_state(keys: &SharedKeys) -> HostResult<(Option<TableState>, u32)> {
    let (value, cas) = host::shared_data(&keys.state)?;
    Ok((value.as_deref().and_then(TableState::decode), cas))
}

/// The stored table's JSON.
pub fn read_table(keys: &SharedKeys) -> HostResult<Option<Vec<u8>>> {
    Ok(host::shared_data(&keys.table)?.0)
}

/// Stores a validated table fetched from the controller. Skipped when shared data already
/// holds this generation or a newer one (a poller that lost its lease mid-call must not roll
/// the table back). The table is written before the state, so a worker that sees the new
/// generation in `state` finds that table, or a newer one, under `table`.
pub fn publish_table(
    keys: &SharedKeys,
    generation: u64,
    json: &[u8],
    now_ms: u64,
) -> HostResult<bool> {
    let (state, cas) = read_state(keys)?;
    if state.is_some_and(|s| s.generation >= generation) {
        confirm(keys, generation, now_ms)?;
        return Ok(false);
    }
    host::set_shared_data(&keys.table, json, 0)?;
    let next = TableState {
        generation,
        confirmed_ms: now_ms,
    };
    Ok(host::set_shared_data(&keys.state, next.encode().as_bytes(), cas)? == CasWrite::Written)
}

/// Records that the controller confirmed `generation` is current (a 304).
pub fn confirm(keys: &SharedKeys, generation: u64, now_ms: u64) -> HostResult<()> {
    let (state, cas) = read_state(keys)?;
    let generation = state.map_or(generation, |s| s.generation.max(generation));
    let next = TableState {
        generation,
        confirmed_ms: now_ms,
    };
    // A lost CAS race means someone else just wrote a fresher state; nothing to redo.
    host::set_shared_data(&keys.state, next.encode().as_bytes(), cas).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefixed_by_plugin() {
        let k = SharedKeys::for_plugin("istio-system.veer");
        assert_eq!(k.lease, "veer.istio-system.veer.lease");
        assert_eq!(k.state, "veer.istio-system.veer.state");
        assert_eq!(k.table, "veer.istio-system.veer.table");
        assert_eq!(k.workers, "veer.istio-system.veer.workers");
        assert_eq!(
            k.queue(0xab),
            "veer.istio-system.veer.notify.00000000000000ab"
        );
    }

    #[test]
    fn state_round_trips_and_rejects_garbage() {
        let s = TableState {
            generation: 42,
            confirmed_ms: 1_700_000_000_000,
        };
        assert_eq!(TableState::decode(s.encode().as_bytes()), Some(s));
        assert_eq!(TableState::decode(b"42"), None);
        assert_eq!(TableState::decode(b"x 1"), None);
    }
}
