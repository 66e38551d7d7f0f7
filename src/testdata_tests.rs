//! Golden values for `testdata`: a seed keeps its bytes. Fixtures in the unit, bench and
//! integration tests are built from these shapes (and the union_random regression seeds
//! replay against them), so a change here must be deliberate. The hashes were taken from the
//! generators as they were written out in each test file before they moved to `testdata`.

use crate::testdata::{pseudo, pseudo_mixed, pseudo_text, Mix, XorShift64};
use sha2::{Digest as _, Sha256};

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

#[test]
fn a_seed_keeps_its_bytes() {
    assert_eq!(
        sha(&pseudo(100_000, 1)),
        "6d89b2c15676a4c33da7d0e877a6874bf63c2e3cc7000ae84c5531379fce0e41"
    );
    assert_eq!(
        sha(&pseudo_text(100_000, 11)),
        "756dc431f5cdb66873a0db3f82857a1990769f377d0e87724d25d92d0a0cc320"
    );
    let half = |random, period, letters| Mix {
        random,
        period,
        letters,
    };
    assert_eq!(
        sha(&pseudo_mixed(100_000, 7, half(24, 48, 5))),
        "4ae359a1a2abd0e143fc02ae71c8993f483bfe65c00158b9a2beb55ad2f2264c"
    );
    let state = 3u64
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    assert_eq!(
        sha(&XorShift64::from_state(state).mixed(100_000, half(32, 64, 7))),
        "5e0096220a4ffa8f0100a1484e87cd382f45381b4b37b72ab0881b89ad54a323"
    );
}

#[test]
fn below_does_not_step_for_an_empty_range() {
    let (mut a, mut b) = (XorShift64::new(9), XorShift64::new(9));
    assert_eq!(a.below(0), 0);
    assert_eq!(a.next_u64(), b.next_u64());
    assert!((0..1000).all(|_| a.below(10) < 10));
}
