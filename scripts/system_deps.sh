#!/usr/bin/env bash
# Checks the system packages Tributary needs beyond Python: Java 17 (Spark), the PostgreSQL
# JDBC driver (Spark batch reads) and Chromium (the UI tests drive it headless). Installs them with apt where it can (root on Debian/Ubuntu);
# otherwise stops and says exactly what to install.
set -euo pipefail

JDBC_JAR=/usr/share/java/postgresql.jar
missing=()

java_major() {
  java -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ {print $2}'
}

if ! command -v java >/dev/null 2>&1; then
  missing+=(openjdk-17-jre-headless)
else
  major=$(java_major)
  if [ "${major:-0}" != "17" ]; then
    echo "setup: java on PATH is version ${major:-unknown}; Spark 4 here is tested with Java 17." >&2
    echo "setup: install openjdk-17-jre-headless and put it first on PATH (or set JAVA_HOME)." >&2
    exit 1
  fi
fi
[ -f "$JDBC_JAR" ] || missing+=(libpostgresql-jdbc-java)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing ${missing[*]} with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  exit 0
fi

echo "setup: missing system packages: ${missing[*]}" >&2
echo "setup: install them, e.g.  sudo apt-get install ${missing[*]}" >&2
echo "setup: (Java 17 runs Spark; $JDBC_JAR lets Spark batch jobs read PostgreSQL; chromium runs the UI tests)" >&2
exit 1
