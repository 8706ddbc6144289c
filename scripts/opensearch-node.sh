#!/usr/bin/env bash
# A real OpenSearch node for tests/integration/framing_parity.rs, put together from Maven Central artifacts
# only: the server (org.opensearch:opensearch), its HTTP/transport module
# (org.opensearch.plugin:transport-netty4-client) and their dependencies, started by the
# server's own bootstrap (org.opensearch.bootstrap.OpenSearch, security manager on) in a node
# home laid out here. No other module is loaded.
#
# Usage: scripts/opensearch-node.sh COMMAND
#   version               prints the pinned OpenSearch version
#   resolve               resolves the jars with Maven into $CACHE/VERSION/ (lib/ and
#                         modules/transport-netty4/); once (a complete cache is reused)
#   start DIR [PARENT_PID]
#                         lays out a node home in DIR (created if missing; wiped data), starts
#                         the node in the background (resolves first if needed), waits until its
#                         HTTP transport is bound and prints the HTTP port (127.0.0.1) on stdout.
#                         The node's console log is DIR/logs/console.log, its HTTP trace (every
#                         request it received, see below) DIR/logs/http-trace.log, its pid
#                         DIR/node.pid. With PARENT_PID, a watchdog stops the node once that
#                         process is gone (a killed test leaves no node behind).
#   stop DIR              stops the node started in DIR (SIGTERM, then SIGKILL after 10 s)
#   where                 prints the cache directory
#
# The HTTP trace: OpenSearch's HttpTracer (logger org.opensearch.http.HttpTracer at TRACE,
# http.tracer.include "*") logs one line per request the REST layer received, written here as
#   <message>TAB<exception message, empty when none>
# with CR/LF escaped, where <message> is `[ID][OPAQUE_ID][METHOD][URI] received request from
# [CHANNEL]` or `[ID][OPAQUE_ID][STATUS][TYPE][LENGTH][HEADERS] sent response to [CHANNEL]
# success [BOOL]`. A request line with an exception is one the node rejected (400, nothing
# executed). Requests to /_nodes/_local/stats/http* (the tests' own poll of open HTTP
# connections) are not traced.
#
# Running as root: OpenSearch refuses to; the node then runs as nobody (65534, setpriv), so DIR
# and its parents must be traversable by nobody (a fresh directory under /tmp is).
#
# Environment: CAPTURE_PROXY_CACHE (default ~/.cache/capture-proxy), JAVA (default: java on
# PATH; 2.19 needs Java 11-21, tested with 17), OPENSEARCH_NODE_HEAP (default 512m),
# MAVEN_TIMEOUT_S (default 600), START_TIMEOUT_S (default 180).
set -euo pipefail

# Pins (Maven Central, 2026-12). 2.19.7 is the release whose Netty (4.1.139.Final) the os-2.19.7
# Netty origin of scripts/netty-origins.sh uses. org.opensearch:opensearch-plugin-classloader
# (ExtendedPluginsClassLoader: the distribution's lib/ has it, the server pom does not name it)
# is not published at 2.19.7: 2.19.6's is used in its place (the node starts and loads the
# module with it). log4j-core is an optional dependency of the server pom, needed to log.
# 3.x (Java 21+; the machine's Temurin 25) was not tried: its bootstrap differs (no security
# manager) and this layout may not fit it.
OS_VERSION="2.19.7"
CLASSLOADER_VERSION="2.19.6"
LOG4J_VERSION="2.25.5"
DEP_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

CACHE="${CAPTURE_PROXY_CACHE:-$HOME/.cache/capture-proxy}/opensearch-node"
JAVA="${JAVA:-java}"
HEAP="${OPENSEARCH_NODE_HEAP:-512m}"
MAVEN_TIMEOUT_S="${MAVEN_TIMEOUT_S:-600}"
START_TIMEOUT_S="${START_TIMEOUT_S:-180}"
VDIR="$CACHE/$OS_VERSION"
STATS_PATH="/_nodes/_local/stats/http"

die() {
    echo "opensearch-node: $*" >&2
    exit 1
}

resolve() {
    if [[ -f "$VDIR/complete" ]]; then
        return 0
    fi
    command -v mvn >/dev/null || die "mvn not found (apt-get install maven)"
    echo "opensearch-node: resolving OpenSearch $OS_VERSION from Maven Central (once)" >&2
    rm -rf "$VDIR"
    mkdir -p "$VDIR/maven"
    # Two projects: the server's classpath, and the module's own jars (without the server
    # and its libraries, which the module sees through its parent class loader).
    cat >"$VDIR/maven/server.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.capture-proxy</groupId><artifactId>opensearch-node-server</artifactId>
  <version>1</version><packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.opensearch</groupId><artifactId>opensearch</artifactId>
      <version>$OS_VERSION</version></dependency>
    <dependency><groupId>org.opensearch</groupId><artifactId>opensearch-plugin-classloader</artifactId>
      <version>$CLASSLOADER_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId>
      <version>$LOG4J_VERSION</version></dependency>
  </dependencies>
</project>
EOF
    cat >"$VDIR/maven/module.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.capture-proxy</groupId><artifactId>opensearch-node-module</artifactId>
  <version>1</version><packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.opensearch.plugin</groupId><artifactId>transport-netty4-client</artifactId>
      <version>$OS_VERSION</version>
      <exclusions><exclusion><groupId>org.opensearch</groupId><artifactId>*</artifactId></exclusion></exclusions>
    </dependency>
  </dependencies>
</project>
EOF
    local p out
    for p in server:lib module:modules/transport-netty4; do
        out="$VDIR/${p#*:}"
        if ! timeout "$MAVEN_TIMEOUT_S" mvn -B -q -f "$VDIR/maven/${p%%:*}.xml" \
            "$DEP_PLUGIN:copy-dependencies" -DoutputDirectory="$out" -DincludeScope=runtime \
            >"$VDIR/maven/${p%%:*}.log" 2>&1; then
            cat "$VDIR/maven/${p%%:*}.log" >&2
            die "Maven could not resolve the ${p%%:*} jars of OpenSearch $OS_VERSION (log above)"
        fi
    done
    chmod -R a+rX "$VDIR/lib" "$VDIR/modules"
    touch "$VDIR/complete"
}

# Links (or copies) the cached jars into the node home: the node may run as nobody, who
# cannot enter ~root.
place_jars() {
    local from="$1" to="$2"
    mkdir -p "$to"
    cp -l "$from"/*.jar "$to"/ 2>/dev/null || cp "$from"/*.jar "$to"/
}

layout() {
    local home="${1:?}"
    [[ "$home" != "/" ]] || die "refusing / as the node home"
    local d
    for d in bin data logs config lib modules plugins tmp; do
        rm -rf "${home:?}/$d"
    done
    mkdir -p "$home/bin" "$home/config" "$home/data" "$home/logs" "$home/plugins" "$home/tmp"
    place_jars "$VDIR/lib" "$home/lib"
    place_jars "$VDIR/modules/transport-netty4" "$home/modules/transport-netty4"
    # The module's descriptor and security policy are not in the Maven artifact (the
    # distribution's build writes them): written here.
    cat >"$home/modules/transport-netty4/plugin-descriptor.properties" <<EOF
description=Netty 4 HTTP and transport layer
version=$OS_VERSION
name=transport-netty4
classname=org.opensearch.transport.Netty4Plugin
java.version=11
opensearch.version=$OS_VERSION
extended.plugins=
has.native.controller=false
EOF
    cat >"$home/modules/transport-netty4/plugin-security.policy" <<'EOF'
grant {
  // accept and open connections (the HTTP and transport servers)
  permission java.net.SocketPermission "*", "accept,connect";
  // Netty's reflective access to direct buffers, where the JVM allows it
  permission java.lang.RuntimePermission "accessClassInPackage.sun.misc";
  permission java.lang.RuntimePermission "accessDeclaredMembers";
  // Netty's event loops at shutdown (else SIGTERM leaves the node hanging)
  permission java.lang.RuntimePermission "getClassLoader";
  permission java.lang.RuntimePermission "setContextClassLoader";
  permission java.lang.reflect.ReflectPermission "suppressAccessChecks";
};
EOF
    cat >"$home/config/opensearch.yml" <<EOF
cluster.name: capture-proxy-parity
node.name: parity-node
discovery.type: single-node
network.host: 127.0.0.1
http.port: 0
transport.port: 0
path.data: $home/data
path.logs: $home/logs
bootstrap.memory_lock: false
cluster.routing.allocation.disk.threshold_enabled: false
http.tracer.include: "*"
http.tracer.exclude: "$STATS_PATH*"
EOF
    cat >"$home/config/log4j2.properties" <<EOF
status = error
appender.console.type = Console
appender.console.name = console
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d{ISO8601}][%-5p][%-25c{1.}] %m%n
rootLogger.level = info
rootLogger.appenderRef.console.ref = console

appender.trace.type = File
appender.trace.name = trace
appender.trace.fileName = $home/logs/http-trace.log
appender.trace.immediateFlush = true
appender.trace.layout.type = PatternLayout
appender.trace.layout.alwaysWriteExceptions = false
appender.trace.layout.pattern = %enc{%m}{CRLF}\t%enc{%ex{short.message}}{CRLF}%n
logger.httptrace.name = org.opensearch.http.HttpTracer
logger.httptrace.level = trace
logger.httptrace.additivity = false
logger.httptrace.appenderRef.trace.ref = trace
EOF
    : >"$home/logs/http-trace.log"
}

start() {
    local home="$1" parent="${2:-}"
    resolve
    mkdir -p "$home"
    home="$(cd "$home" && pwd)"
    if [[ -f "$home/node.pid" ]] && kill -0 "$(cat "$home/node.pid")" 2>/dev/null; then
        die "a node already runs in $home (pid $(cat "$home/node.pid"))"
    fi
    layout "$home"
    local -a as=()
    if [[ "$(id -u)" == 0 ]]; then
        chmod a+rx "$home" "$home/bin" "$home/config" "$home/lib" "$home/modules" "$home/modules/transport-netty4" "$home/plugins"
        chmod a+r "$home"/config/* "$home"/modules/transport-netty4/*
        # config/: the bootstrap writes an empty keystore there.
        chown -R 65534:65534 "$home/config" "$home/data" "$home/logs" "$home/tmp"
        as=(setpriv --reuid=65534 --regid=65534 --clear-groups)
    fi
    local t0
    t0="$(date +%s%N)"
    # No stdin, output to a file: the caller's pipes are not held open by the node.
    "${as[@]}" env HOME="$home/tmp" "$JAVA" -Xms"$HEAP" -Xmx"$HEAP" -XX:+UseSerialGC \
        -XX:TieredStopAtLevel=1 -Xss1m -Djava.awt.headless=true -Dfile.encoding=UTF-8 \
        -Djna.nosys=true -Dio.netty.noUnsafe=true -Dio.netty.noKeySetOptimization=true \
        -Dio.netty.recycler.maxCapacityPerThread=0 -Dlog4j.shutdownHookEnabled=false \
        -Dlog4j2.disable.jmx=true -Dlog4j2.formatMsgNoLookups=true \
        -Djava.io.tmpdir="$home/tmp" \
        -Dopensearch.path.home="$home" -Dopensearch.path.conf="$home/config" \
        -Dopensearch.distribution.type=tar -Dopensearch.bundled_jdk=false \
        -cp "$home/lib/*" org.opensearch.bootstrap.OpenSearch \
        </dev/null >"$home/logs/console.log" 2>&1 &
    local pid=$!
    echo "$pid" >"$home/node.pid"
    if [[ -n "$parent" ]]; then
        (
            while kill -0 "$parent" 2>/dev/null && kill -0 "$pid" 2>/dev/null; do sleep 1; done
            kill "$pid" 2>/dev/null || exit 0
            sleep 10
            kill -9 "$pid" 2>/dev/null || true
        ) </dev/null >/dev/null 2>&1 &
        disown || true
    fi
    local deadline=$((SECONDS + START_TIMEOUT_S)) port=""
    while ((SECONDS < deadline)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 40 "$home/logs/console.log" >&2
            die "the node exited during start (console log above: $home/logs/console.log)"
        fi
        if grep -q '\] started$' "$home/logs/console.log" 2>/dev/null; then
            port="$(grep -o 'AbstractHttpServerTransport\] publish_address {127\.0\.0\.1:[0-9]*' \
                "$home/logs/console.log" | grep -o '[0-9]*$' | head -n 1)"
            break
        fi
        sleep 0.2
    done
    if [[ -z "$port" ]]; then
        kill "$pid" 2>/dev/null || true
        tail -n 40 "$home/logs/console.log" >&2
        die "the node did not start within ${START_TIMEOUT_S} s"
    fi
    echo "opensearch-node: OpenSearch $OS_VERSION started in $((($(date +%s%N) - t0) / 1000000)) ms, HTTP 127.0.0.1:$port, pid $pid" >&2
    echo "$port"
}

stop() {
    local home="$1" pid
    [[ -f "$home/node.pid" ]] || return 0
    pid="$(cat "$home/node.pid")"
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$home/node.pid"
}

cmd="${1:-}"
shift || true
case "$cmd" in
version) echo "$OS_VERSION" ;;
resolve) resolve ;;
start)
    [[ $# -ge 1 ]] || die "usage: start DIR [PARENT_PID]"
    start "$@"
    ;;
stop)
    [[ $# -eq 1 ]] || die "usage: stop DIR"
    stop "$1"
    ;;
where) echo "$CACHE" ;;
*)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
