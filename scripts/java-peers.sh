#!/usr/bin/env bash
# The Java peers of this project, as test oracles and benchmark anchors: the OpenSearch
# Migration Assistant's Traffic Replayer and its Java Capture Proxy. Resolves them with Maven
# (cached in ~/.m2, the resulting classpaths in ~/.cache/capture-proxy/java-peers/VERSION/),
# picks a JDK that runs them, and starts them.
#
# Usage: scripts/java-peers.sh COMMAND
#   resolve                 resolve both from Maven Central at $MIGRATIONS_VERSION (with their
#                           runtime dependencies) and cache the classpaths; on failure, says
#                           which artifact did not resolve and what the registry answered
#   latest                  the newest version of each artifact that Maven Central lists
#   available               exit 0 when both classpaths are cached and a suitable JDK exists
#   classpath replayer|proxy
#                           print the cached classpath
#   java                    print the java binary that runs them (class files need Java 21+)
#   replayer ARGS...        run org.opensearch.migrations.replay.TrafficReplayer ARGS
#   proxy ARGS...           run org.opensearch.migrations.trafficcapture.proxyserver.CaptureProxy ARGS
#   where                   print the cache directory and how its classpaths were made
#   clean                   remove this version's cache directory
#
# Environment: JAVA_PEERS_JVM_OPTS (extra JVM options for `replayer` / `proxy`, split on
# spaces), JAVA_PEERS_JAVA_HOME (a JDK to use instead of the search below),
# CAPTURE_PROXY_CACHE (default ~/.cache/capture-proxy).
set -euo pipefail

# Upstream publishes its Maven artifacts as 0.<release tag> (release workflow:
# -Dbuild.version=0.<tag>). 3.3.5 is the newest release tag of the upstream repository
# (2026-07-15); the modules these applications are built from are unchanged from it to the
# reference snapshot (3.3.6-dev).
MIGRATIONS_GROUP="org.opensearch.migrations.trafficcapture"
MIGRATIONS_VERSION="0.3.3.5"
REPLAYER_ARTIFACT="trafficReplayer"
PROXY_ARTIFACT="trafficCaptureProxyServer"
REPLAYER_MAIN="org.opensearch.migrations.replay.TrafficReplayer"
PROXY_MAIN="org.opensearch.migrations.trafficcapture.proxyserver.CaptureProxy"
# Maven's bundled dependency plugin (2.8) cannot resolve version ranges or meta versions well.
DEP_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.6.1"
# Upstream's build targets Java 21 (class file major 65).
MIN_JAVA=21

CACHE_ROOT="${CAPTURE_PROXY_CACHE:-$HOME/.cache/capture-proxy}"
CACHE="$CACHE_ROOT/java-peers/$MIGRATIONS_VERSION"

die() { echo "java-peers: $*" >&2; exit 1; }

# One scratch directory per run, removed on exit.
WORK=""
cleanup() { [ -z "$WORK" ] || rm -rf "$WORK"; }
trap cleanup EXIT
scratch() { # name -> a fresh directory under the run's scratch directory
  [ -n "$WORK" ] || WORK="$(mktemp -d)"
  rm -rf "${WORK:?}/$1"
  mkdir -p "$WORK/$1"
  echo "$WORK/$1"
}
note() { echo "java-peers: $*" >&2; }

need_mvn() { command -v mvn >/dev/null 2>&1 || die "mvn not found (Debian package: maven)"; }

# A pom with the given <dependency> elements (and optional dependencyManagement imports).
write_pom() { # dir deps_xml [managed_xml]
  mkdir -p "$1"
  cat >"$1/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.capture-proxy</groupId><artifactId>java-peers</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencyManagement><dependencies>${3:-}</dependencies></dependencyManagement>
  <dependencies>$2</dependencies>
</project>
EOF
}

dep_xml() { # group artifact version [type] [scope]
  local extra=""
  [ -n "${4:-}" ] && extra+="<type>$4</type>"
  [ -n "${5:-}" ] && extra+="<scope>$5</scope>"
  printf '<dependency><groupId>%s</groupId><artifactId>%s</artifactId><version>%s</version>%s</dependency>' \
    "$1" "$2" "$3" "$extra"
}

# Runtime classpath of the pom in dir, written to file.
build_classpath() { # dir outfile logfile
  (cd "$1" && mvn -B -U "$DEP_PLUGIN:build-classpath" -Dmdep.includeScope=runtime \
    -Dmdep.outputFile="$2" >"$3" 2>&1)
}

# ---------------------------------------------------------------------------------------------
# Maven Central
# ---------------------------------------------------------------------------------------------

cmd_resolve() {
  need_mvn
  local work
  work="$(scratch resolve)"
  local failed=()
  for a in "$REPLAYER_ARTIFACT" "$PROXY_ARTIFACT"; do
    write_pom "$work/$a" "$(dep_xml "$MIGRATIONS_GROUP" "$a" "$MIGRATIONS_VERSION")"
    if build_classpath "$work/$a" "$work/$a.classpath" "$work/$a.log"; then
      note "$MIGRATIONS_GROUP:$a:$MIGRATIONS_VERSION resolved ($(tr ':' '\n' <"$work/$a.classpath" | wc -l) jars)"
    else
      failed+=("$a")
      note "$MIGRATIONS_GROUP:$a:$MIGRATIONS_VERSION did not resolve:"
      grep -E '^\[ERROR\]' "$work/$a.log" | head -3 | sed 's/^/    /' >&2
    fi
  done
  if ((${#failed[@]})); then
    note "asking Maven Central which versions of each it lists (maven-metadata.xml):"
    cmd_latest >&2 || true
    note "nothing cached: the peers cannot be had from the package registries this machine reaches."
    note "A classpath made elsewhere can be placed in $CACHE/{replayer,proxy}.classpath."
    exit 1
  fi
  mkdir -p "$CACHE"
  cp "$work/$REPLAYER_ARTIFACT.classpath" "$CACHE/replayer.classpath"
  cp "$work/$PROXY_ARTIFACT.classpath" "$CACHE/proxy.classpath"
  echo "maven-central $MIGRATIONS_GROUP:*:$MIGRATIONS_VERSION" >"$CACHE/origin"
  note "cached in $CACHE; java: $(cmd_java)"
}

# The newest version Maven Central lists for each artifact (a [0,) range resolves through
# the artifact's maven-metadata.xml).
cmd_latest() {
  need_mvn
  local work rc=0
  work="$(scratch latest)"
  for a in "$REPLAYER_ARTIFACT" "$PROXY_ARTIFACT"; do
    write_pom "$work/$a" "$(dep_xml "$MIGRATIONS_GROUP" "$a" "[0,)" pom)"
    if (cd "$work/$a" && mvn -B -U "$DEP_PLUGIN:tree" -DoutputFile=tree.txt >log.txt 2>&1); then
      echo "$MIGRATIONS_GROUP:$a newest listed: $(grep -o "$a:pom:[^:]*" "$work/$a/tree.txt" | head -1 | cut -d: -f3)"
    else
      rc=1
      local why
      why="$(grep -E 'No versions available|Could not find metadata|Could not transfer' "$work/$a/log.txt" | head -1 | sed 's/^\[[A-Z]*\] //')"
      echo "$MIGRATIONS_GROUP:$a: no version listed (${why:-see mvn output})"
    fi
  done
  return $rc
}

# ---------------------------------------------------------------------------------------------
# Build from upstream source (when Maven Central does not serve the artifacts)
# ---------------------------------------------------------------------------------------------

# `git show REV:path` of the source repository.

# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------

# Feature version of a java binary (17, 21, 25, ...).
java_feature() {
  "$1" -XshowSettings:properties -version 2>&1 | sed -nE 's/^[[:space:]]*java\.specification\.version = ([0-9]+).*/\1/p' | head -1
}

# The first JDK with Java >= MIN_JAVA: $JAVA_PEERS_JAVA_HOME, `java` on PATH, /usr/lib/jvm/*.
cmd_java() {
  local c f
  for c in ${JAVA_PEERS_JAVA_HOME:+"$JAVA_PEERS_JAVA_HOME/bin/java"} "$(command -v java || true)" /usr/lib/jvm/*/bin/java; do
    if [ -z "$c" ] || [ ! -x "$c" ]; then continue; fi
    f="$(java_feature "$c")"
    if [ -n "$f" ] && [ "$f" -ge "$MIN_JAVA" ]; then
      echo "$c"
      return 0
    fi
  done
  note "no Java $MIN_JAVA+ found (upstream's class files are major $((MIN_JAVA + 44))); set JAVA_PEERS_JAVA_HOME"
  return 1
}

cmd_classpath() {
  case "${1:-}" in
    replayer | proxy) ;;
    *) die "usage: classpath replayer|proxy" ;;
  esac
  [ -s "$CACHE/$1.classpath" ] || die "$1 not cached in $CACHE: run scripts/java-peers.sh resolve"
  cat "$CACHE/$1.classpath"
}

cmd_available() {
  [ -s "$CACHE/replayer.classpath" ] && [ -s "$CACHE/proxy.classpath" ] && cmd_java >/dev/null 2>&1
}

# Class file major version of a class on a classpath (65 = Java 21).
class_major() { # classpath class-name
  local entry rel="${2//.//}.class"
  for entry in $(tr ':' ' ' <<<"$1"); do
    if [ -d "$entry" ] && [ -f "$entry/$rel" ]; then
      od -An -j6 -N2 -tu1 "$entry/$rel" | awk '{ print $1 * 256 + $2 }'
      return
    elif [ -f "$entry" ] && unzip -l "$entry" "$rel" >/dev/null 2>&1; then
      unzip -p "$entry" "$rel" | od -An -j6 -N2 -tu1 | awk '{ print $1 * 256 + $2 }'
      return
    fi
  done
}

run_main() { # which main args...
  local which="$1" main="$2"
  shift 2
  local cp java
  cp="$(cmd_classpath "$which")"
  java="$(cmd_java)" || exit 1
  # shellcheck disable=SC2086
  exec "$java" ${JAVA_PEERS_JVM_OPTS:-} -cp "$cp" "$main" "$@"
}

cmd_where() {
  echo "cache: $CACHE"
  [ -f "$CACHE/origin" ] && echo "made from: $(cat "$CACHE/origin")" || echo "made from: (nothing cached)"
  if [ -s "$CACHE/replayer.classpath" ]; then
    echo "replayer class file major: $(class_major "$(cat "$CACHE/replayer.classpath")" "$REPLAYER_MAIN")"
    echo "proxy class file major: $(class_major "$(cat "$CACHE/proxy.classpath")" "$PROXY_MAIN")"
  fi
  echo "java: $(cmd_java 2>&1) ($(java_feature "$(cmd_java 2>/dev/null || echo java)" 2>/dev/null))"
}

main() {
  local cmd="${1:-}"
  shift || true
  case "$cmd" in
    resolve) cmd_resolve ;;
    latest) cmd_latest ;;
    available) cmd_available ;;
    classpath) cmd_classpath "$@" ;;
    java) cmd_java ;;
    replayer) run_main replayer "$REPLAYER_MAIN" "$@" ;;
    proxy) run_main proxy "$PROXY_MAIN" "$@" ;;
    where) cmd_where ;;
    clean) rm -rf "$CACHE" ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
  esac
}

main "$@"
