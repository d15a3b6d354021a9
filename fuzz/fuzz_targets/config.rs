//! Fuzz target `config`: arbitrary bytes as `pluginConfig` and as a controller table.
//! Neither parser may panic. What they accept must compile, survive a serialize/parse round
//! trip unchanged, find its own routes, and decide a synthetic request within the contract.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veer_core::{
    decide, encode_cookie_value, parse_plugin_config, parse_table, signing_keys, CompiledTable,
    Reason, RoutingTable, SigningKeys,
};
use veer_fuzz::{authority_for, bucket_of, check_decision, request, KEY_A};

fuzz_target!(|data: &[u8]| {
    if let Ok(cfg) = parse_plugin_config(data) {
        let again = serde_json::to_vec(&cfg).unwrap_or_default();
        match parse_plugin_config(&again) {
            Ok(back) => assert_eq!(back, cfg, "pluginConfig changed in a round trip"),
            Err(e) => panic!("accepted config re-serialized is rejected: {e}"),
        }
        // keysEnv is read through the closure; inline keys ignore it.
        let keys = match signing_keys(&cfg, |_| Some(KEY_A.to_string())) {
            Ok(k) => k,
            Err(e) => panic!("validated config has unusable keys: {e}"),
        };
        if let Some(table) = &cfg.table {
            exercise(table, keys.as_ref());
        }
    }
    if let Ok(table) = parse_table(data) {
        let again = serde_json::to_vec(&table).unwrap_or_default();
        match parse_table(&again) {
            Ok(back) => assert_eq!(back, table, "table changed in a round trip"),
            Err(e) => panic!("accepted table re-serialized is rejected: {e}"),
        }
        exercise(&table, None);
    }
});

fn exercise(table: &RoutingTable, keys: Option<&SigningKeys>) {
    let compiled = match CompiledTable::compile(table) {
        Ok(c) => c,
        Err(e) => panic!("validated table does not compile: {e}"),
    };
    assert_eq!(compiled.generation(), table.generation);
    // Bounded work per input: a table with thousands of routes is still parsed above.
    for (i, route) in table.routes.iter().enumerate().take(8) {
        let Some(host) = route.hosts.first() else {
            panic!("validated route {i} has no hosts")
        };
        let authority = authority_for(host, i as u8);
        let path = format!("{}fz?q=1", route.path_prefix);
        let found = compiled.find_route(authority.as_bytes(), path.as_bytes());
        if let Some(r) = found {
            assert!(
                path.starts_with(&r.route().path_prefix),
                "{authority} {path} found {:?} whose prefix does not match",
                r.name()
            );
        }
        let exact_host = !host.starts_with('*');
        if exact_host {
            // Its own host slot holds this route, and its prefix matches: some route (this
            // one or a longer prefix on the same host) must be found.
            assert!(
                found.is_some(),
                "route {:?} not found at {authority}{path}",
                route.name
            );
        }
        let Some(r) = found else { continue };
        let seed = [i as u8; 16];
        let mut headers = vec![("x-request-id", b"fuzz".to_vec())];
        if let Some(aff) = &r.route().session_affinity {
            let value = encode_cookie_value(r.name(), &seed, keys);
            headers.push((
                "cookie",
                format!("{}={value}", aff.cookie_name).into_bytes(),
            ));
        }
        let req = request(&authority, &path, &headers);
        let d = decide(r, &req, keys, i as u64);
        check_decision(r, &d);
        // A cookie the filter minted itself must be honoured whenever the bucket comes from
        // a cookie at all (no override, A/B rule or sticky key in the way, and the route not
        // idle: at weight 0 without mirroring veer-core skips the cookie as it cannot matter).
        let idle = r.route().weight == 0 && r.route().mirror_weight == 0;
        if r.route().session_affinity.is_some()
            && r.route().sticky_key.is_none()
            && !idle
            && matches!(d.reason, Reason::Cookie | Reason::Weight)
        {
            assert_eq!(
                d.reason,
                Reason::Cookie,
                "own cookie ignored on {:?}",
                r.name()
            );
            assert_eq!(d.bucket, Some(bucket_of(r, &seed)));
            assert_eq!(
                d.set_cookie,
                None,
                "valid cookie replaced on {:?}",
                r.name()
            );
        }
    }
}
