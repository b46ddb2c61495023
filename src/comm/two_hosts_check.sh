#!/bin/sh
# ctest driver of an MPI job across two hosts. Two network namespaces joined by a veth pair stand
# in for two machines (10.77.0.1 and 10.77.0.2); mpirun runs on the first and starts the rank of
# the second through an rsh agent that runs `ip netns exec` instead of ssh, and the ranks and
# Open MPI's daemons talk over the pair only (TCP, no shared memory).
#   1. `fairkv run` and `fairkv batch` with one rank per host print what one device prints.
#   2. The link goes down mid-decode: each rank ends within --comm-timeout, plus the pings that
#      find the silent rank, naming the other; mpirun exits non-zero, and nothing is left running
#      on either host.
# Open MPI's launcher notices a lost host only through TCP, which retransmits to a silent peer
# for about 15 minutes under Linux's defaults (tcp_retries2 = 15): these hosts give up after 3
# retransmissions (a few seconds) and Open MPI's connections probe idle peers after 10 s, as a
# cluster that wants lost hosts noticed is set up. The ranks do not depend on it: --comm-timeout
# (3 s here) ends them first.
# Exit 77, printing why, where namespaces cannot be made (not root, no `ip`, a container without
# CAP_SYS_ADMIN / CAP_NET_ADMIN, no veth) or mpirun is not Open MPI's.
# Usage: two_hosts_check.sh FAIRKV MODEL MPIEXEC
set -u
fairkv=$1 model=$2 mpiexec=$3
skip() {
  echo "skipped: $*"
  exit 77
}
[ -f "$model" ] || skip "$model is absent"
[ "$(id -u)" -eq 0 ] || skip "network namespaces need root (running as uid $(id -u))"
command -v ip >/dev/null 2>&1 || skip "no ip command (Debian package iproute2)"
"$mpiexec" --version 2>/dev/null | grep -qE "Open MPI|OpenRTE" || skip "$mpiexec is not Open MPI's mpirun"

dir=$(mktemp -d)
nsa=fairkv$$a nsb=fairkv$$b  # this run's hosts: unique, so that runs side by side do not meet
hosta=10.77.0.1 hostb=10.77.0.2
job=
cleanup() {
  [ -n "$job" ] && kill "$job" 2>/dev/null
  for ns in $nsa $nsb; do
    pids=$(ip netns pids "$ns" 2>/dev/null)
    [ -n "$pids" ] && kill -9 $pids 2>/dev/null
    ip netns delete "$ns" 2>/dev/null
  done
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

ip netns add $nsa 2>"$dir/err" || skip "ip netns add failed: $(cat "$dir/err")"
ip netns add $nsb 2>"$dir/err" || skip "ip netns add failed: $(cat "$dir/err")"
ip link add veth0 netns $nsa type veth peer name veth0 netns $nsb 2>"$dir/err" ||
  skip "no veth pair between namespaces: $(cat "$dir/err")"
for side in "$nsa $hosta" "$nsb $hostb"; do
  set -- $side
  ip -n "$1" addr add "$2/24" dev veth0 && ip -n "$1" link set veth0 up &&
    ip -n "$1" link set lo up &&
    ip netns exec "$1" sh -c 'echo 3 > /proc/sys/net/ipv4/tcp_retries2' 2>"$dir/err" ||
    skip "cannot set up host $2 in namespace $1: $(cat "$dir/err")"
done

# The rsh agent: Open MPI calls it as `agent HOST COMMAND...` where ssh would log in to HOST and
# run COMMAND with a shell.
cat >"$dir/agent" <<EOF
#!/bin/sh
host=\$1
shift
case \$host in
  $hosta) ns=$nsa ;;
  $hostb) ns=$nsb ;;
  *) echo "agent: unknown host \$host" >&2; exit 1 ;;
esac
exec ip netns exec "\$ns" sh -c "\$*"
EOF
chmod +x "$dir/agent"
printf '%s slots=1\n%s slots=1\n' $hosta $hostb >"$dir/hosts"
net=10.77.0.0/24
mpirun="$mpiexec --hostfile $dir/hosts --mca plm_rsh_agent $dir/agent --mca btl tcp,self
  --mca btl_tcp_if_include $net --mca oob_tcp_if_include $net --mca oob_tcp_keepalive_time 10
  --mca oob_tcp_keepalive_intvl 1 --mca oob_tcp_keepalive_probes 3"
# on_a COMMAND...: runs on host a (where mpirun starts the job) with a time limit.
on_a() { ip netns exec $nsa timeout 60 "$@"; }
fail=0

# 1. One rank per host prints what one device prints.
prompt="Once upon a time, there was a little girl named Lily. She loved to play outside"
ref=$("$fairkv" run -m "$model" -p "$prompt" -n 24 --temp 0 2>"$dir/err") || {
  cat "$dir/err"
  exit 1
}
got=$(on_a $mpirun -np 2 "$fairkv" run -m "$model" -p "$prompt" -n 24 --temp 0 --devices 2 \
  --comm mpi --placement split 2>"$dir/err")
if [ "$got" != "$ref" ]; then
  echo "FAILED: fairkv run on two hosts"
  printf '  expected: %s\n  got:      %s\n' "$ref" "$got"
  sed 's/^/  stderr: /' "$dir/err"
  fail=1
else
  echo "ok: fairkv run on two hosts prints the single device's continuation"
fi
cat >"$dir/req.jsonl" <<'JSON'
{"id": "a", "prompt": "Once upon a time, there was a little girl named Lily.", "max_tokens": 20, "temperature": 0}
{"id": "b", "prompt": "The cat sat on the mat", "max_tokens": 16, "temperature": 0, "arrival": 0.02}
{"id": "c", "prompt": "Tom and Sue went to the", "max_tokens": 24, "temperature": 0, "stop": ["."]}
JSON
strip() { sed 's/,"tpot_ms".*//; s/"preemptions":[0-9]*,//'; }
ref=$("$fairkv" batch -m "$model" --requests "$dir/req.jsonl" --json 2>"$dir/err" | strip)
got=$(on_a $mpirun -np 2 "$fairkv" batch -m "$model" --requests "$dir/req.jsonl" --json \
  --devices 2 --comm mpi 2>"$dir/err" | strip)
if [ -z "$ref" ] || [ "$got" != "$ref" ]; then
  echo "FAILED: fairkv batch on two hosts"
  printf '  expected: %s\n  got:      %s\n' "$ref" "$got"
  sed 's/^/  stderr: /' "$dir/err"
  fail=1
else
  echo "ok: fairkv batch on two hosts serves the single device's outputs"
fi

# 2. The link goes down mid-decode. Rank 1's messages go to a file of its own: its output
# would otherwise travel to mpirun over the lost link.
timeout=3
long="run -m $model -p Once -n 100000 --temp 0 --devices 2 --comm mpi --comm-timeout $timeout"
start=$(date +%s)
ip netns exec $nsa timeout 120 $mpirun -np 1 "$fairkv" $long : \
  -np 1 sh -c "exec $fairkv $long 2>$dir/rank1.err" >/dev/null 2>"$dir/rank0.err" &
job=$!
# running PROCESS NS: whether PROCESS runs in namespace NS.
running() {
  pids=$(ip netns pids "$2")
  [ -n "$pids" ] && ps -o comm= -p $pids 2>/dev/null | grep -qx "$1"
}
for i in $(seq 200); do
  running fairkv $nsb && running fairkv $nsa && break
  sleep 0.1
done
sleep 2  # into the decode
running fairkv $nsb || echo "FAILED: rank 1 did not start on host $hostb"
ip -n $nsa link set veth0 down
down=$(date +%s)
gone_a= gone_b= ended=
while [ $(($(date +%s) - down)) -lt 60 ]; do
  now=$(($(date +%s) - down))
  [ -z "$gone_a" ] && ! running fairkv $nsa && gone_a=$now
  [ -z "$gone_b" ] && ! running fairkv $nsb && gone_b=$now
  [ -z "$ended" ] && ! kill -0 $job 2>/dev/null && ended=$now
  [ -n "$gone_a" ] && [ -n "$gone_b" ] && [ -n "$ended" ] && [ -z "$(ip netns pids $nsa)" ] &&
    [ -z "$(ip netns pids $nsb)" ] && break
  sleep 0.2
done
wait $job
rc=$?
job=
left=$(for ns in $nsa $nsb; do
  pids=$(ip netns pids $ns)
  [ -n "$pids" ] && ps -o comm= -p $pids
done | tr '\n' ' ')
# A rank waits --comm-timeout, then up to 3 s for the others' answers to its pings.
limit=$((timeout + 3 + 3))
echo "link down after $((down - start)) s of the job; then rank 0 ended after ${gone_a:-?} s," \
  "rank 1 after ${gone_b:-?} s, mpirun after ${ended:-?} s (exit $rc)"
if [ $rc -eq 0 ] || [ $rc -eq 124 ] || [ -z "$ended" ]; then
  echo "FAILED: the job did not end with an error (mpirun exit $rc)"
  fail=1
fi
for side in "0 1 ${gone_a:-99} rank0.err" "1 0 ${gone_b:-99} rank1.err"; do
  set -- $side
  if [ "$3" -gt $limit ] || ! grep -q "fairkv: rank $1: .*no answer from rank $2" "$dir/$4"; then
    echo "FAILED: rank $1 did not end within $limit s naming rank $2:"
    sed 's/^/  stderr: /' "$dir/$4"
    fail=1
  else
    echo "ok: rank $1 ended in $3 s: $(grep "no answer" "$dir/$4")"
  fi
done
if [ -n "$left" ]; then
  echo "FAILED: still running after the job: $left"
  fail=1
else
  echo "ok: nothing left running on either host"
fi
exit $fail
