#!/usr/bin/env bash
# Checks the system packages Tributary needs beyond Python: Java 17 (Spark and the Kafka broker),
# PostgreSQL 15's server binaries, Maven (fetches the broker), the PostgreSQL JDBC driver (Spark batch reads) and Chromium (the UI tests drive it headless). Installs them with apt where it can (root on Debian/Ubuntu);
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
# The private PostgreSQL cluster of `make up` and `make test` (nothing needs a running server).
compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null || missing+=(postgresql-15)
# Maven fetches the embedded Kafka broker from Maven Central (deploy/kafka-broker/pom.xml).
command -v mvn >/dev/null 2>&1 || missing+=(maven)
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
echo "setup: (Java 17 runs Spark and Kafka; postgresql-15 the private database; maven fetches the broker; $JDBC_JAR lets Spark batch jobs read PostgreSQL; chromium runs the UI tests)" >&2
exit 1
