#!/usr/bin/env bash
# The main job on the default box: builds xhyve, xhyve-provider and the tiny box, installs the box
# in the provider, creates and starts a machine, waits for SSH and runs a command in it, as
# `vagrant up` + `vagrant ssh -c` would. The machine keeps running; the last lines say how to log
# in, stop and destroy it. Home: $XHYVE_HOME (default ~/.xhyve). Installs the Debian packages it
# needs first (scripts/packages.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=../../scripts/packages.sh
. scripts/packages.sh
need_packages build box run
cargo build --release -p xhyve -p xhyve-provider
boxes/tiny/box.sh target/boxes/tiny.box
p=target/release/xhyve-provider
name=tiny-demo
"$p" box add "$PWD/target/boxes/tiny.box" --name xhyve/tiny --force >/dev/null
id=$("$p" call machine.list | python3 -c "import json,sys
print(next((m['id'] for m in json.load(sys.stdin) if m['name'] == '$name'), ''))")
if [ -z "$id" ]; then
	id=$("$p" call machine.create '{"box": "xhyve/tiny", "name": "'$name'"}' |
		python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
fi
state=$("$p" call machine.state '{"id": "'"$id"'"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')
[ "$state" = running ] || "$p" call machine.start '{"id": "'"$id"'"}' >/dev/null
echo "machine $id ($name) is running; waiting for SSH (minutes on a nested-KVM host)..." >&2
"$p" call machine.wait_ssh '{"id": "'"$id"'", "timeout": 1800}' >/dev/null
"$p" call machine.exec '{"id": "'"$id"'", "command": "uname -a; uptime"}' >/dev/null
info=$("$p" call machine.ssh_info '{"id": "'"$id"'"}')
read -r host port key < <(python3 -c 'import json,sys; i=json.loads(sys.argv[1])
print(i["host"], i["port"], i["private_key_path"][0])' "$info")
cat >&2 <<MSG
log in:  ssh -i $key -p $port -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null vagrant@$host
stop:    $p call machine.stop '{"id": "$id"}'
destroy: $p call machine.destroy '{"id": "$id", "force": true}'
MSG
