//! A deterministic mutation fuzzer over the recorded messages: the same body
//! as [`fuzz_decode`], run on 20,000 mutants in every `cargo test`.

use crate::test_rng::XorShift;
use bytes::Bytes;

use super::super::{decode, fuzz_decode};
use super::all_fixture_messages;

const ITERATIONS: usize = 20_000;

fn mutate(rng: &mut XorShift, buf: &mut Vec<u8>) {
    let at = rng.below(buf.len() + 1);
    match rng.below(6) {
        0 if at < buf.len() => buf[at] ^= 1 << rng.below(8),
        1 if at < buf.len() => buf[at] = rng.byte(),
        2 => buf.insert(at, rng.byte()),
        3 if at < buf.len() => {
            buf.remove(at);
        }
        4 => buf.truncate(at),
        5 if at + 4 <= buf.len() => {
            let big = [0x7f, 0xff, 0xff, 0xff];
            buf[at..at + 4].copy_from_slice(&big[..]);
        }
        _ => buf.push(rng.byte()),
    }
}

#[test]
fn mutated_recorded_messages_never_panic() {
    let corpus = all_fixture_messages();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let (mut decoded, mut rejected) = (0, 0);
    for _ in 0..ITERATIONS {
        let (_, seed) = &corpus[rng.below(corpus.len())];
        let mut buf = seed.to_vec();
        for _ in 0..=rng.below(4) {
            mutate(&mut rng, &mut buf);
        }
        fuzz_decode(&buf);
        let buf = Bytes::from(buf);
        match decode(&buf) {
            Ok(message) => {
                decoded += 1;
                assert_eq!(decode(&buf), Ok(message), "decoding is deterministic");
            }
            Err(err) => {
                rejected += 1;
                assert!(!err.to_string().is_empty());
            }
        }
    }
    assert_eq!(decoded + rejected, ITERATIONS);
    assert!(
        decoded > 100 && rejected > 100,
        "{decoded} decoded, {rejected} rejected"
    );
}
