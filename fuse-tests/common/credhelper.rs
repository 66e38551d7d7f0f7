//! A `docker-credential-*` helper for tests: a small python3 program speaking the helper
//! protocol (get/store/erase/list), keeping its secrets in `helper-db.json` beside itself and
//! logging each action (never the secret) to `helper.log`.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use super::cli::StrataEnv;

/// A `docker-credential-NAME` helper (python3) that keeps its secrets in `helper-db.json`
/// beside itself and logs each action (never the secret) to `helper.log`.
const HELPER: &str = r#"#!/usr/bin/env python3
import json, os, sys
here = os.path.dirname(os.path.abspath(__file__))
db = os.path.join(here, "helper-db.json")
action = sys.argv[1] if len(sys.argv) > 1 else ""
data = sys.stdin.read()
try:
    with open(db) as f:
        store = json.load(f)
except FileNotFoundError:
    store = {}
server = json.loads(data)["ServerURL"] if action == "store" else data.strip()
with open(os.path.join(here, "helper.log"), "a") as f:
    f.write(action + " " + server + "\n")
if action == "get":
    e = store.get(server)
    if e is None:
        print("credentials not found in native keychain")
        sys.exit(1)
    print(json.dumps({"ServerURL": server, "Username": e[0], "Secret": e[1]}))
elif action == "store":
    d = json.loads(data)
    store[server] = [d["Username"], d["Secret"]]
    with open(db, "w") as f:
        json.dump(store, f)
elif action == "erase":
    if store.pop(server, None) is None:
        print("credentials not found in native keychain")
        sys.exit(1)
    with open(db, "w") as f:
        json.dump(store, f)
elif action == "list":
    print(json.dumps({k: v[0] for k, v in store.items()}))
else:
    sys.exit(2)
"#;

/// Install the helper as `docker-credential-<name>` in `<env>/bin`, put that first on the
/// PATH of `env`'s commands; returns the bin directory.
pub fn install_helper(env: &mut StrataEnv, name: &str) -> PathBuf {
    let bin = env.base_dir().join("bin");
    fs::create_dir_all(&bin).unwrap();
    let path = bin.join(format!("docker-credential-{name}"));
    fs::write(&path, HELPER).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    let old = std::env::var("PATH").unwrap_or_default();
    env.set_env("PATH", &format!("{}:{old}", bin.display()));
    bin
}

pub fn helper_log(bin: &Path) -> String {
    fs::read_to_string(bin.join("helper.log")).unwrap_or_default()
}
