use veer_core::{bucket, fresh_seed, mirror_bucket, BUCKETS};
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

/// Share of 100,000 fresh seeds with `bucket < weight`, in basis points.
fn canary_share_bp(weight: u16, revision: &str, hash: fn(&str, &[u8]) -> u16) -> f64 {
    let n = 100_000u64;
    let hits = (0..n)
        .filter(|&i| hash(revision, &fresh_seed(i)) < weight)
        .count();
    hits as f64 * 10_000.0 / n as f64
}

#[test]
fn canary_share_is_within_half_a_point_of_the_weight() {
    for weight in [1u16, 500, 3000, 9999] {
        let share = canary_share_bp(weight, "7f9c2ba", bucket);
        // ±0.5 percentage points = ±50 basis points.
        assert!(
            (share - f64::from(weight)).abs() <= 50.0,
            "weight {weight} bp gave {share} bp"
        );
    }
}

#[test]
fn mirror_share_is_within_half_a_point_of_the_mirror_weight() {
    for weight in [1u16, 500, 3000, 9999] {
        let share = canary_share_bp(weight, "7f9c2ba", mirror_bucket);
        assert!(
            (share - f64::from(weight)).abs() <= 50.0,
            "mirror {weight} bp gave {share} bp"
        );
    }
}

#[test]
fn every_decile_holds_a_tenth_of_the_users() {
    let mut deciles = [0u32; 10];
    for i in 0..100_000u64 {
        deciles[usize::from(bucket("rev", &fresh_seed(i)) / 1000)] += 1;
    }
    for (d, count) in deciles.iter().enumerate() {
        assert!(
            (9_500..=10_500).contains(count),
            "decile {d} has {count} of 100000"
        );
    }
}

#[test]
fn buckets_stay_below_10000() {
    for i in 0..10_000u64 {
        assert!(u64::from(bucket("r", &fresh_seed(i))) < BUCKETS);
        assert!(u64::from(mirror_bucket("r", &fresh_seed(i))) < BUCKETS);
    }
}

#[test]
fn a_new_revision_reshuffles_users_and_the_mirror_bucket_is_independent() {
    // That a bucket is a fixed function of (revision, seed) is pinned by vectors.rs.
    let n = 10_000u64;
    // The revision is part of the hash: across two revisions a user keeps the very same
    // bucket only by chance, 1 in 10,000 (Poisson with mean n / 10,000 = 1 here; 9 or more
    // has probability about 1e-6). A bucket that ignored the revision would keep all n.
    let same_bucket = (0..n)
        .filter(|&i| bucket("rev-a", &fresh_seed(i)) == bucket("rev-b", &fresh_seed(i)))
        .count();
    assert!(
        same_bucket <= 8,
        "{same_bucket} of {n} users kept their exact bucket across revisions"
    );
    // Canary at 50% in run a vs run b: independent, so about half agree.
    let agree = (0..n)
        .filter(|&i| {
            (bucket("rev-a", &fresh_seed(i)) < 5000) == (bucket("rev-b", &fresh_seed(i)) < 5000)
        })
        .count();
    assert!(
        (4_700..=5_300).contains(&agree),
        "{agree} of {n} kept their side across revisions"
    );
    let agree_mirror = (0..n)
        .filter(|&i| {
            (bucket("rev-a", &fresh_seed(i)) < 5000)
                == (mirror_bucket("rev-a", &fresh_seed(i)) < 5000)
        })
        .count();
    assert!(
        (4_700..=5_300).contains(&agree_mirror),
        "mirror and canary buckets correlate: {agree_mirror}"
    );
}

#[test]
fn revision_is_length_prefixed() {
    // Without a length prefix ("ab", "c..") and ("a", "bc..") would hash the same bytes.
    let seed_c = *b"c_______________";
    let mut seed_bc = [0u8; 17];
    seed_bc[0] = b'b';
    seed_bc[1..].copy_from_slice(&seed_c);
    let distinct = (0..64u8)
        .filter(|&k| {
            let mut s1 = seed_c;
            s1[15] = k;
            let mut s2 = seed_bc;
            s2[16] = k;
            bucket("ab", &s1) != bucket("a", &s2)
        })
        .count();
    assert!(
        distinct >= 60,
        "only {distinct} of 64 concatenation pairs differ"
    );
}

#[test]
fn fresh_seeds_differ_for_different_entropy() {
    let seeds: std::collections::BTreeSet<[u8; 16]> = (0..10_000u64).map(fresh_seed).collect();
    assert_eq!(seeds.len(), 10_000);
    // (Equal entropy giving an equal seed is pinned by vectors.rs.) One bit of entropy more
    // or less must change the seed completely, or neighbouring edge counters would give
    // related seeds: flipping each of the 64 entropy bits of 200 values flips on average
    // half of the 128 seed bits. Binomial(128 x 12,800, 1/2): sigma about 640 bits in total,
    // so the mean is within 0.2 bits of 64 (4 sigma = 0.2); and no single pair flips fewer
    // than 32 bits (5.7 sigma below 64 for one pair, over 12,800 pairs: about 1e-4).
    let mut total = 0u64;
    let mut fewest = u32::MAX;
    for i in 0..200u64 {
        let base = fresh_seed(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        for bit in 0..64 {
            let other = fresh_seed(i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (1 << bit));
            let flipped: u32 = base
                .iter()
                .zip(other.iter())
                .map(|(a, b)| (a ^ b).count_ones())
                .sum();
            total += u64::from(flipped);
            fewest = fewest.min(flipped);
        }
    }
    let mean = total as f64 / 12_800.0;
    assert!(
        (mean - 64.0).abs() <= 0.2,
        "mean {mean} of 128 bits flipped"
    );
    assert!(
        fewest >= 32,
        "one bit of entropy flipped only {fewest} seed bits"
    );
}
