//! docker's management-command forms (`image ls`, `container rm`, ...) as aliases of the
//! top-level commands: the command line is rewritten before clap parses it. Pure argument
//! handling; calls nothing else.

use std::ffi::OsString;

/// `image X` -> the top-level words it stands for. `prune` stays (a real subcommand).
const IMAGE: &[(&str, &[&str])] = &[
    ("ls", &["images"]),
    ("list", &["images"]),
    ("rm", &["rmi"]),
    ("remove", &["rmi"]),
    ("pull", &["pull"]),
    ("push", &["push"]),
    ("tag", &["tag"]),
    ("inspect", &["inspect", "--type", "image"]),
    ("history", &["history"]),
    ("save", &["save"]),
    ("load", &["load"]),
    ("import", &["import"]),
];

/// `container X` -> the top-level words it stands for. `prune` stays.
const CONTAINER: &[(&str, &[&str])] = &[
    ("ls", &["ps"]),
    ("list", &["ps"]),
    ("ps", &["ps"]),
    ("rm", &["rm"]),
    ("remove", &["rm"]),
    ("kill", &["kill"]),
    ("stop", &["stop"]),
    ("start", &["start"]),
    ("restart", &["restart"]),
    ("logs", &["logs"]),
    ("inspect", &["inspect", "--type", "container"]),
    ("run", &["run"]),
    ("exec", &["exec"]),
    ("wait", &["wait"]),
    ("attach", &["attach"]),
    ("pause", &["pause"]),
    ("unpause", &["unpause"]),
    ("commit", &["commit"]),
    ("export", &["export"]),
];

/// Index of the subcommand word: the first argument after the program name that is not a
/// global option (`--root DIR`, `--config FILE`, `-D`) or its value.
pub fn subcommand_index(args: &[OsString]) -> Option<usize> {
    let mut skip_value = false;
    for (i, a) in args.iter().enumerate().skip(1) {
        let w = a.to_string_lossy();
        if skip_value {
            skip_value = false;
            continue;
        }
        if w == "--root" || w == "--config" {
            skip_value = true;
            continue;
        }
        if w.starts_with('-') {
            continue;
        }
        return Some(i);
    }
    None
}

/// Rewrite `strata [GLOBAL] image|container VERB ARGS` to the top-level command it aliases.
/// Anything else is returned unchanged.
pub fn expand(mut args: Vec<OsString>) -> Vec<OsString> {
    let Some(i) = subcommand_index(&args) else {
        return args;
    };
    let table = match args[i].to_str() {
        Some("image") => IMAGE,
        Some("container") => CONTAINER,
        _ => return args,
    };
    let Some(verb) = args.get(i + 1).and_then(|v| v.to_str()) else {
        return args;
    };
    let Some((_, words)) = table.iter().find(|(v, _)| *v == verb) else {
        return args;
    };
    let words: Vec<OsString> = words.iter().map(OsString::from).collect();
    args.splice(i..i + 2, words);
    args
}

/// docker's status for a command line of `run` that does not parse is 125 (clap's own is 2):
/// true when the (already expanded) command line's subcommand is `run`.
pub fn is_run_command(args: &[OsString]) -> bool {
    subcommand_index(args).is_some_and(|i| args[i] == "run")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(s: &str) -> String {
        let v = expand(s.split(' ').map(OsString::from).collect());
        v.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn management_forms_become_top_level_commands() {
        assert_eq!(ex("strata image ls -q"), "strata images -q");
        assert_eq!(ex("strata --root /r image rm x"), "strata --root /r rmi x");
        assert_eq!(
            ex("strata -D container inspect c"),
            "strata -D inspect --type container c"
        );
        assert_eq!(ex("strata container ls -a"), "strata ps -a");
        assert_eq!(ex("strata image prune -a"), "strata image prune -a");
        assert_eq!(ex("strata images"), "strata images");
        // An image named like a verb after another command is left alone.
        assert_eq!(ex("strata run image ls"), "strata run image ls");
    }

    #[test]
    fn run_is_recognised_after_global_options() {
        let v = |s: &str| expand(s.split(' ').map(OsString::from).collect());
        assert!(is_run_command(&v("strata --root /x run --bad img")));
        assert!(is_run_command(&v("strata container run img")));
        assert!(!is_run_command(&v("strata pull run")));
    }
}
