//! Checking a 206 answer's `Content-Range` against the Range asked for. Pure header logic,
//! no I/O; used by `Client::get_blob`.

use super::Error;
use reqwest::header::HeaderMap;
use std::ops::Range;

/// A 206 answer must carry `Content-Range: bytes START-END/TOTAL` (or `/*`) naming exactly
/// the bytes asked for: a shifted or resized range would put other bytes of the blob at the
/// offsets the caller expects (RFC 9110 section 14.4; a single-range 206 always has it).
pub(super) fn check_content_range(
    h: &HeaderMap,
    asked: &Range<u64>,
    what: &str,
) -> Result<(), Error> {
    let got = h
        .get(reqwest::header::CONTENT_RANGE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let parsed = got.as_deref().and_then(|v| {
        let (first, last) = v
            .trim()
            .strip_prefix("bytes ")?
            .split_once('/')?
            .0
            .split_once('-')?;
        Some((
            first.trim().parse::<u64>().ok()?,
            last.trim().parse::<u64>().ok()?,
        ))
    });
    let want_last = asked.end.checked_sub(1);
    match parsed {
        Some((first, last)) if first == asked.start && Some(last) == want_last => Ok(()),
        _ => Err(Error::BadContentRange {
            what: what.to_string(),
            asked: format!("{}-{}", asked.start, asked.end.saturating_sub(1)),
            // A hostile header can be long: name only its start.
            got: got.map_or_else(|| "(none)".into(), |g| g.chars().take(100).collect()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(value: Option<&str>, asked: Range<u64>) -> Result<(), Error> {
        let mut h = HeaderMap::new();
        if let Some(v) = value {
            h.insert(reqwest::header::CONTENT_RANGE, v.parse().unwrap());
        }
        check_content_range(&h, &asked, "blob")
    }

    #[test]
    fn content_range_must_name_the_bytes_asked_for() {
        for (value, asked, ok) in [
            (Some("bytes 0-99/1000"), 0..100, true),
            (Some("bytes 100-199/*"), 100..200, true),
            (Some("bytes  100-199/1000 "), 100..200, true),
            (Some("bytes 101-200/1000"), 100..200, false), // shifted
            (Some("bytes 100-149/1000"), 100..200, false), // short
            (Some("bytes 100-299/1000"), 100..200, false), // long
            (Some("bytes */1000"), 100..200, false),
            (Some("items 100-199/1000"), 100..200, false),
            (Some("bytes 100-199"), 100..200, false),
            (Some("bytes -199/1000"), 100..200, false),
            (None, 0..10, false),
            (Some("bytes 0-0/1"), 0..0, false),
        ] {
            let r = check(value, asked.clone());
            assert_eq!(r.is_ok(), ok, "{value:?} for {asked:?}: {r:?}");
            if let Err(e) = r {
                let msg = e.to_string();
                assert!(msg.contains("Content-Range"), "{msg}");
            }
        }
        let long = format!("bytes 1-2/{}", "9".repeat(5000));
        let msg = check(Some(&long), 0..10).unwrap_err().to_string();
        assert!(msg.len() < 300, "{msg}");
    }
}
