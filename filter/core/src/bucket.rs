//! Sticky buckets: `H(revision, seed) mod 10000`. The hash is xxh3 on u64, which is defined
//! independently of the platform's word size, so the 32-bit wasm filter and the 64-bit
//! controller and tests compute the same bucket for the same user, bit for bit.
//!
//! Every hash input starts with a domain tag, so the canary bucket, the mirror bucket and
//! the seed derivations are independent of each other. The revision is length-prefixed, so
//! no two different (revision, seed) pairs feed the hash the same bytes.

use xxhash_rust::xxh3::{xxh3_128, xxh3_64, Xxh3Default};

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

/// Inputs up to this many bytes are hashed in one shot from a stack buffer. xxh3's one-shot
/// and streaming forms give the same hash for the same bytes, but on 40-byte inputs the
/// one-shot form costs a fraction of the streaming hasher's setup in the V8 filter
/// (BENCHMARKS.md §1). 240 bytes is where xxh3 itself stops using its short-input paths.
const ONE_SHOT_MAX: usize = 240;

/// The bytes of `veer\0`, `tag` and `parts`, concatenated, hashed once with `one_shot` when
/// they fit the stack buffer, else fed to the streaming hasher and finished with `stream`.
fn tagged_hash<T>(
    tag: u8,
    parts: &[&[u8]],
    one_shot: fn(&[u8]) -> T,
    stream: fn(&Xxh3Default) -> T,
) -> T {
    const PREFIX: &[u8] = b"veer\0";
    let mut buf = [0u8; ONE_SHOT_MAX];
    let mut len = PREFIX.len() + 1;
    buf[..PREFIX.len()].copy_from_slice(PREFIX);
    buf[PREFIX.len()] = tag;
    for part in parts {
        match buf.get_mut(len..len + part.len()) {
            Some(dst) => dst.copy_from_slice(part),
            None => {
                let mut h = Xxh3Default::new();
                h.update(PREFIX);
                h.update(&[tag]);
                parts.iter().for_each(|p| h.update(p));
                return stream(&h);
            }
        }
        len += part.len();
    }
    one_shot(&buf[..len])
}

fn hash64(tag: u8, parts: &[&[u8]]) -> u64 {
    tagged_hash(tag, parts, xxh3_64, Xxh3Default::digest)
}

fn hash128(tag: u8, parts: &[&[u8]]) -> u128 {
    tagged_hash(tag, parts, xxh3_128, Xxh3Default::digest128)
}

fn revision_hash(tag: u8, revision: &str, seed: &[u8]) -> u64 {
    hash64(
        tag,
        &[
            &(revision.len() as u64).to_le_bytes(),
            revision.as_bytes(),
            seed,
        ],
    )
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
    hash128(TAG_FRESH_SEED, &[&entropy.to_le_bytes()]).to_le_bytes()
}

/// The seed of a sticky-key user: a function of the key's bytes only (not the revision),
/// so the same user id lands in the same seed and, within a run, the same bucket. The
/// affinity cookie then carries this seed, keeping the user in place when a later request
/// lacks the key header.
pub fn key_seed(key: &[u8]) -> Seed {
    hash128(TAG_KEY_SEED, &[key]).to_le_bytes()
}

/// Folds a request id into entropy, so two requests with equal edge entropy but different
/// `x-request-id` still get different fresh seeds.
pub fn mix_request_id(entropy: u64, request_id: &[u8]) -> u64 {
    hash64(TAG_REQUEST_ID, &[&entropy.to_le_bytes(), request_id])
}
