# Shared settings for the local stack scripts; sourced, not run.
# Everything installed or started lives under $SLUICE_CACHE, outside the repo,
# so a second run (and CI on the same machine) reuses it.

SLUICE_CACHE="${SLUICE_CACHE:-$HOME/.cache/sluice-dev}"
KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
MOTO_VERSION="5.2.5"
KAFKA_PORT="${KAFKA_PORT:-9092}"
MOTO_PORT="${MOTO_PORT:-4566}"
REGISTRY_VERSION="3.3.3"
REGISTRY_PORT="${REGISTRY_PORT:-8081}"

KAFKA_HOME="$SLUICE_CACHE/kafka-$KAFKA_VERSION"
VENV="$SLUICE_CACHE/venv"
RUN_DIR="$SLUICE_CACHE/run"
KAFKA_LOG_DIR="$RUN_DIR/kafka-$KAFKA_PORT"
KAFKA_PID="$RUN_DIR/kafka-$KAFKA_PORT.pid"
MOTO_PID="$RUN_DIR/moto-$MOTO_PORT.pid"
REGISTRY_HOME="$SLUICE_CACHE/apicurio-registry-$REGISTRY_VERSION"
REGISTRY_PID="$RUN_DIR/registry-$REGISTRY_PORT.pid"
# The certificates of the broker's secured listeners (scripts/dev-pki).
export KAFKA_PKI_DIR="$RUN_DIR/pki"

# What the demo and the tests use; the SDKs read these.
export KAFKA_BROKERS="127.0.0.1:$KAFKA_PORT"
# Its secured listeners (scripts/kafka-broker): SASL_SSL, SSL with client
# certificates, SASL_PLAINTEXT.
export KAFKA_SASL_SSL_BROKERS="localhost:$((KAFKA_PORT + 2))"
export KAFKA_MTLS_BROKERS="localhost:$((KAFKA_PORT + 3))"
export KAFKA_SASL_PLAINTEXT_BROKERS="127.0.0.1:$((KAFKA_PORT + 4))"
# Apicurio Registry's Confluent-compatible API, basic auth on (a local
# user of the registry's own: sluice / registry-secret).
export SCHEMA_REGISTRY_URL="http://127.0.0.1:$REGISTRY_PORT/apis/ccompat/v7"
export SCHEMA_REGISTRY_USER="sluice"
export SCHEMA_REGISTRY_PASSWORD="registry-secret"
export AWS_ENDPOINT_URL="http://127.0.0.1:$MOTO_PORT"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-testing}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-testing}"
export AWS_REGION="${AWS_REGION:-us-east-1}"
export AWS_DEFAULT_REGION="$AWS_REGION"
export SLUICE_PYTHON="$VENV/bin/python"
# A Go producer for records the Rust and Python clients cannot write
# (header keys that are not UTF-8); dev-up builds it.
export SLUICE_RAWPRODUCE="$SLUICE_CACHE/bin/rawproduce"
# Build output is cached too, one directory per checkout: cargo takes a
# crate's sources as unchanged when their times are older than its last
# build, even if that build was of another checkout.
SLUICE_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHECKOUT_KEY="$(basename "$SLUICE_REPO")-$(printf %s "$SLUICE_REPO" | cksum | cut -d' ' -f1)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$SLUICE_CACHE/targets/$CHECKOUT_KEY}"

# The build cache and the broker's log dir share a finite disk with every
# other checkout on the machine (CI included): cargo keeps every superseded
# test binary, and every checkout gets its own target directory.
# prune_builds: drops the target directories of checkouts unused for two
# days, and all but the newest four executables of each name in this one
# (test binaries and examples; proc-macro libraries are left alone).
prune_builds() {
  local targets="$SLUICE_CACHE/targets" dir
  mkdir -p "$CARGO_TARGET_DIR" && touch "$CARGO_TARGET_DIR/.last-used"
  for dir in "$targets"/*/; do
    dir=${dir%/}
    [ -d "$dir" ] || continue
    case "$dir" in "$CARGO_TARGET_DIR" | "$CARGO_TARGET_DIR"-*) continue ;; esac
    local stamp="${dir%-fuzz}"
    stamp="${stamp%-docker}/.last-used"
    if [ ! -e "$stamp" ] || [ -n "$(find "$stamp" -mmin +2880)" ]; then
      log "removing the build cache of an unused checkout: $dir"
      rm -rf "$dir"
    fi
  done
  local mine=("$CARGO_TARGET_DIR")
  for dir in "$CARGO_TARGET_DIR-fuzz" "$CARGO_TARGET_DIR-docker"; do
    [ -d "$dir" ] && mine+=("$dir")
  done
  find "${mine[@]}" -maxdepth 5 \
      \( -path '*/deps/*' -o -path '*/examples/*' \) -type f -perm -u+x ! -name '*.so' -size +10M -printf '%T@ %p\n' 2>/dev/null | sort -rn |
    awk '{ n = $2; sub(/.*\//, "", n); sub(/-[0-9a-f]+$/, "", n); if (++seen[n] > 4) print $2 }' |
    xargs -r rm -f || true
}

# delete_topics <regex>: drops the topics whose whole name matches.
delete_topics() {
  java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -cp "$KAFKA_HOME/libs/*" \
    org.apache.kafka.tools.TopicCommand --bootstrap-server "$KAFKA_BROKERS" \
    --delete --if-exists --topic "$1" >/dev/null 2>&1 || true
}

# The tests name their topics <name>-<pid>-<nanos> (tests/it/support.rs
# `unique`); they are dropped before and after a run.
TEST_TOPICS='.+-[0-9]+-[0-9]+'

log() { printf '%s %s\n' "[$(date +%H:%M:%S)]" "$*" >&2; }

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_for <what> <seconds> <command...>: polls the command until it succeeds.
wait_for() {
  local what=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@"; do
    if [ $SECONDS -ge $deadline ]; then
      log "$what did not answer within ${secs}s"
      return 1
    fi
    sleep 0.5
  done
}
