#!/usr/bin/env bash
# The Netty test origins of tests/integration/framing_parity.rs: the small Java HTTP server of
# tests/netty-origin/ (the channel pipeline Elasticsearch / OpenSearch build on Netty's HTTP
# codec), compiled once per Netty version that a supported source release ships.
#
# Usage: scripts/netty-origins.sh COMMAND
#   versions              one line per origin: LABEL NETTY_VERSION PROFILE (the pins below)
#   build [VERSION...]    compiles the origin against each pinned Netty version (or the given
#                         ones) with Maven; classes and the resolved classpath are cached in
#                         $CACHE/netty-VERSION/ (jars stay in ~/.m2, Maven's cache); a version
#                         whose sources and pom did not change is not rebuilt
#   run VERSION LOGFILE [ARGS...]
#                         starts the origin built for VERSION (builds it first if needed) in the
#                         foreground (exec: the caller's child is the JVM); prints the port it
#                         listens on (127.0.0.1) as the first line of stdout and appends one
#                         JSON line per event to LOGFILE; ARGS go to the origin (--profile,
#                         --max-content, ...; the profile defaults to the version's pin)
#   fuzz [SECONDS] [SEED] runs the framing-parity mutation fuzzer for SECONDS (default 600)
#                         against the Netty origin named by CAPTURE_PROXY_FUZZ_ORIGIN
#                         (default es-7.10.2)
#   where                 prints the cache directory
#
# Environment: CAPTURE_PROXY_CACHE (default ~/.cache/capture-proxy), JAVA (default: java on
# PATH; the origin needs Java 11+), MAVEN_TIMEOUT_S (default 600).
set -euo pipefail

# The Netty version each source release ships, from the release's own Maven Central pom
# (the netty-codec-http dependency of its transport-netty4-client plugin; 2026-12):
#   org.elasticsearch.plugin:transport-netty4-client:7.10.2 -> 4.1.49.Final
#   org.opensearch.plugin:transport-netty4-client:1.3.20    -> 4.1.115.Final (newest 1.3.x)
#   org.opensearch.plugin:transport-netty4-client:2.19.7    -> 4.1.139.Final (newest 2.x)
#   org.opensearch.plugin:transport-netty4-client:3.9.0     -> 4.2.18.Final  (newest 3.x)
# PROFILE is the pipeline of that release's Netty4HttpServerTransport: `classic` (decoder,
# decompressor, aggregator; ES 7.10, OS 1.x, OS 2.x) or `h2c` (OS 3.x: HttpServerCodec inside
# CleartextHttp2ServerUpgradeHandler, HTTP/2 by prior knowledge or Upgrade: h2c).
ORIGINS="
es-7.10.2 4.1.49.Final classic
os-1.3.20 4.1.115.Final classic
os-2.19.7 4.1.139.Final classic
os-3.9.0 4.2.18.Final h2c
"
# Maven plugin that writes the classpath, pinned (Maven's default differs by release).
DEP_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROJECT="$HERE/../tests/netty-origin"
CACHE="${CAPTURE_PROXY_CACHE:-$HOME/.cache/capture-proxy}/netty-origin"
JAVA="${JAVA:-java}"
MAVEN_TIMEOUT_S="${MAVEN_TIMEOUT_S:-600}"

die() {
    echo "netty-origins: $*" >&2
    exit 1
}

pin_of() { # VERSION -> "LABEL VERSION PROFILE" (empty if not pinned)
    echo "$ORIGINS" | awk -v v="$1" '$2 == v || $1 == v { print; exit }'
}

# Fingerprint of what a build depends on: the sources and the pom.
fingerprint() {
    (cd "$PROJECT" && find pom.xml src -type f | LC_ALL=C sort | xargs sha256sum) | sha256sum | cut -c1-16
}

build_one() {
    local version="$1"
    local dir="$CACHE/netty-$version"
    local fp
    fp="$(fingerprint)"
    if [[ -f "$dir/classpath.txt" && -d "$dir/classes" && "$(cat "$dir/fingerprint" 2>/dev/null)" == "$fp" ]]; then
        return 0
    fi
    command -v mvn >/dev/null || die "mvn not found (apt-get install maven)"
    echo "netty-origins: building the origin against Netty $version (Maven; once)" >&2
    rm -rf "$dir"
    mkdir -p "$dir"
    if ! timeout "$MAVEN_TIMEOUT_S" mvn -B -q -f "$PROJECT/pom.xml" \
        -Dnetty.version="$version" -Dorigin.build.dir="$dir/build" \
        compile "$DEP_PLUGIN:build-classpath" -Dmdep.outputFile="$dir/classpath.tmp" -Dmdep.includeScope=runtime \
        >"$dir/maven.log" 2>&1; then
        cat "$dir/maven.log" >&2
        die "Maven build against Netty $version failed (log above)"
    fi
    mv "$dir/build/classes" "$dir/classes"
    rm -rf "$dir/build"
    mv "$dir/classpath.tmp" "$dir/classpath.txt"
    echo "$fp" >"$dir/fingerprint"
}

cmd="${1:-}"
shift || true
case "$cmd" in
versions)
    echo "$ORIGINS" | sed '/^$/d'
    ;;
build)
    if [[ $# -eq 0 ]]; then
        set -- $(echo "$ORIGINS" | awk 'NF { print $2 }')
    fi
    for v in "$@"; do
        [[ -n "$(pin_of "$v")" ]] || echo "netty-origins: $v is not a pinned version (building anyway)" >&2
        build_one "$v"
    done
    ;;
run)
    [[ $# -ge 2 ]] || die "usage: run VERSION LOGFILE [ARGS...]"
    version="$1"
    logfile="$2"
    shift 2
    pin="$(pin_of "$version")"
    [[ -n "$pin" ]] && version="$(echo "$pin" | awk '{ print $2 }')"
    profile="$(echo "$pin" | awk '{ print $3 }')"
    build_one "$version"
    dir="$CACHE/netty-$version"
    args=(--log "$logfile")
    [[ -n "$profile" ]] && args+=(--profile "$profile")
    exec "$JAVA" -Xms64m -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
        -Dio.netty.leakDetection.level=disabled \
        -cp "$dir/classes:$(cat "$dir/classpath.txt")" captureproxy.origin.NettyOrigin "${args[@]}" "$@"
    ;;
fuzz)
    secs="${1:-600}"
    seed="${2:-$(date +%s)}"
    cd "$HERE/.."
    CAPTURE_PROXY_TEST_NETTY=1 CAPTURE_PROXY_FUZZ_SECS="$secs" CAPTURE_PROXY_FUZZ_SEED="$seed" \
        exec cargo test --test integration -- --exact framing_parity::fuzz_parity_netty --nocapture
    ;;
where)
    echo "$CACHE"
    ;;
*)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
