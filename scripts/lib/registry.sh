# Shared helpers for scripts: a local docker-registry on 127.0.0.1 and small demo images.
# Source this file; it defines start_registry, build_busybox_image.

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_registry DIR -> sets REGISTRY_HOST=127.0.0.1:PORT and REGISTRY_PID
start_registry() {
  local dir=$1 port
  port=$(free_port)
  mkdir -p "$dir/data"
  cat > "$dir/config.yml" <<YML
version: 0.1
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
log:
  level: warn
YML
  docker-registry serve "$dir/config.yml" > "$dir/registry.log" 2>&1 &
  REGISTRY_PID=$!
  REGISTRY_HOST=127.0.0.1:$port
  for _ in $(seq 1 100); do
    curl -fs "http://$REGISTRY_HOST/v2/" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "registry did not start; log:" >&2; cat "$dir/registry.log" >&2; return 1
}

# build_busybox_image WORKDIR REF: a one-layer image with busybox-static, pushed with skopeo.
build_busybox_image() {
  local dir=$1 ref=$2
  rm -rf "$dir/oci" "$dir/bundle"
  umoci init --layout "$dir/oci"
  umoci new --image "$dir/oci:img"
  umoci unpack --rootless --image "$dir/oci:img" "$dir/bundle" >/dev/null
  mkdir -p "$dir/bundle/rootfs/bin" "$dir/bundle/rootfs/etc"
  cp /bin/busybox "$dir/bundle/rootfs/bin/busybox"
  for c in sh ls cat echo head wc sha256sum; do ln -sf busybox "$dir/bundle/rootfs/bin/$c"; done
  echo 'root:x:0:0:root:/root:/bin/sh' > "$dir/bundle/rootfs/etc/passwd"
  echo 'root:x:0:' > "$dir/bundle/rootfs/etc/group"
  umoci repack --image "$dir/oci:img" "$dir/bundle"
  umoci config --image "$dir/oci:img" --config.cmd /bin/sh --config.env PATH=/bin
  skopeo copy -q --dest-tls-verify=false "oci:$dir/oci:img" "docker://$ref"
}
