//! Errors as one line of text: an error and every cause below it, `: `-separated, as `main`
//! prints them. For logs, and for answers that cross a process boundary (the daemon's socket,
//! a background overlay process). Leaf module: calls nothing else in the crate.

/// `e` and its sources, `: `-separated.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
