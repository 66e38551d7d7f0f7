//! Checking a 206 answer's `Content-Range` against the Range asked for. Pure header logic,
//! no I/O; used by `Client::get_blob`.

use super::Error;
use reqwest::header::HeaderMap;
use std::ops::Range;

/// A 206 answer must carry `Content-Range: bytes START-END/TOTAL` (or `/*`) naming exactly
/// the bytes asked for: a shifted or resized range would put other bytes of the blob at the
/// offsets the caller expects (RFC 9110 section 14.4; a single-range 206 always has it).
/// One exception, for a request asked past the bytes it needs (`need_end` < `asked.end`: a
/// range extended to a mirror's slice end): the answer may end early at the blob's end
/// (`END + 1 == TOTAL`, a number), as servers clamp a range that runs past it, but not
/// before `need_end`.
pub(super) fn check_content_range(
    h: &HeaderMap,
    asked: &Range<u64>,
    need_end: u64,
    what: &str,
) -> Result<u64, Error> {
    let got = h
        .get(reqwest::header::CONTENT_RANGE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let parsed = got.as_deref().and_then(|v| {
        let (span, total) = v.trim().strip_prefix("bytes ")?.split_once('/')?;
        let (first, last) = span.split_once('-')?;
        Some((
            first.trim().parse::<u64>().ok()?,
            last.trim().parse::<u64>().ok()?,
            total.trim().parse::<u64>().ok(),
        ))
    });
    let want_last = asked.end.checked_sub(1);
    let clamped = |last: u64, total: Option<u64>| {
        need_end < asked.end
            && last < asked.end
            && last >= need_end.saturating_sub(1)
            && total == Some(last + 1)
    };
    match parsed {
        Some((first, last, total))
            if first == asked.start
                && (Some(last) == want_last || (want_last.is_some() && clamped(last, total))) =>
        {
            Ok(last + 1)
        }
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

    fn check(value: Option<&str>, asked: Range<u64>) -> Result<u64, Error> {
        check_need(value, asked.clone(), asked.end)
    }

    fn check_need(value: Option<&str>, asked: Range<u64>, need: u64) -> Result<u64, Error> {
        let mut h = HeaderMap::new();
        if let Some(v) = value {
            h.insert(reqwest::header::CONTENT_RANGE, v.parse().unwrap());
        }
        check_content_range(&h, &asked, need, "blob")
    }

    /// A range asked past the bytes needed (to a mirror's slice end) may come back clamped
    /// at the blob's end, never shorter than needed nor clamped anywhere else.
    #[test]
    fn an_extended_range_may_end_at_the_blob_end() {
        for (value, ok) in [
            (Some("bytes 100-299/1000"), Some(300)), // all asked
            (Some("bytes 100-249/250"), Some(250)),  // clamped at the blob's end
            (Some("bytes 100-149/150"), Some(150)),  // clamped exactly at the need
            (Some("bytes 100-148/149"), None),       // shorter than needed
            (Some("bytes 100-249/1000"), None),      // short, not at the blob's end
            (Some("bytes 100-249/*"), None),         // total unknown
            (Some("bytes 100-349/350"), None),       // longer than asked
            (Some("bytes 101-249/250"), None),       // shifted
        ] {
            let r = check_need(value, 100..300, 150);
            assert_eq!(r.as_ref().ok().copied(), ok, "{value:?}: {r:?}");
        }
        // Without an extension a clamped answer is short.
        assert!(check(Some("bytes 100-249/250"), 100..300).is_err());
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
