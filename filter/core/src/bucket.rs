//! Sticky buckets: `H(revision, seed) mod 10000`. The hash is xxh3 on u64, which is defined
//! independently of the platform's word size, so the 32-bit wasm filter and the 64-bit
//! controller and tests compute the same bucket for the same user, bit for bit.
//!
//! Every hash input starts with a domain tag, so the canary bucket, the mirror bucket and
//! the seed derivations are independent of each other. The revision is length-prefixed, so
//! no two different (revision, seed) pairs feed the hash the same bytes.

use xxhash_rust::xxh3::Xxh3Default;

/// A position in 0..10000, compared against a weight in basis points: canary iff
/// `bucket < weight`. Because the comparison is monotone in the weight, a user whose bucket
/// is fixed only ever moves primary→canary as the weight rises.
pub type Bucket = u16;

/// Number of buckets; weights are in the same unit (basis points).
pub const BUCKETS: u64 = 10_000;

/// Length of a seed carried in an affinity cookie.
pub const SEED_LEN: usize = 16;

/// A user's sticky identity: random for cookie users, derived from the key for key users.
pub type Seed = [u8; SEED_LEN];

const TAG_CANARY: u8 = 1;
const TAG_MIRROR: u8 = 2;
const TAG_FRESH_SEED: u8 = 3;
const TAG_KEY_SEED: u8 = 4;
const TAG_REQUEST_ID: u8 = 5;

fn tagged_hasher(tag: u8) -> Xxh3Default {
    let mut h = Xxh3Default::new();
    h.update(b"veer\0");
    h.update(&[tag]);
    h
}

fn revision_hash(tag: u8, revision: &str, seed: &[u8]) -> u64 {
    let mut h = tagged_hasher(tag);
    h.update(&(revision.len() as u64).to_le_bytes());
    h.update(revision.as_bytes());
    h.update(seed);
    h.digest()
}

/// The canary bucket of `seed` in the run `revision`. A new revision reshuffles users.
pub fn bucket(revision: &str, seed: &[u8]) -> Bucket {
    // u64 % 10000 < 10000 always fits u16; the bias of the modulo is below 2^-50.
    (revision_hash(TAG_CANARY, revision, seed) % BUCKETS) as Bucket
}

/// The mirror bucket of `seed`: independent of `bucket`, so being mirrored says nothing
/// about where the user would sit on the canary scale.
pub fn mirror_bucket(revision: &str, seed: &[u8]) -> Bucket {
    (revision_hash(TAG_MIRROR, revision, seed) % BUCKETS) as Bucket
}

/// A fresh seed for a user without a cookie or key. `entropy` is whatever per-request
/// uniqueness the edge has (time ⊕ counter, a hash of `x-request-id`); it is spread over all
/// 16 bytes, so equal entropy gives an equal seed and distinct entropy distinct seeds.
pub fn fresh_seed(entropy: u64) -> Seed {
    let mut h = tagged_hasher(TAG_FRESH_SEED);
    h.update(&entropy.to_le_bytes());
    h.digest128().to_le_bytes()
}

/// The seed of a sticky-key user: a function of the key's bytes only (not the revision),
/// so the same user id lands in the same seed and, within a run, the same bucket. The
/// affinity cookie then carries this seed, keeping the user in place when a later request
/// lacks the key header.
pub fn key_seed(key: &[u8]) -> Seed {
    let mut h = tagged_hasher(TAG_KEY_SEED);
    h.update(key);
    h.digest128().to_le_bytes()
}

/// Folds a request id into entropy, so two requests with equal edge entropy but different
/// `x-request-id` still get different fresh seeds.
pub fn mix_request_id(entropy: u64, request_id: &[u8]) -> u64 {
    let mut h = tagged_hasher(TAG_REQUEST_ID);
    h.update(&entropy.to_le_bytes());
    h.update(request_id);
    h.digest()
}
