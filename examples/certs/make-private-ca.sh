#!/bin/sh
# Generates certs/private-ca.pem, the example private CA used by
# `trust anchor "certs/private-ca.pem"` in examples/seed.tlspol.
# Run once from the examples/ directory; the PEM is committed, the key is
# thrown away (the example only needs the CA certificate).
set -eu
key=$(mktemp)
trap 'rm -f "$key"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$key" -out certs/private-ca.pem -days 3650 \
    -subj "/O=Example Corp/CN=Example Corp Private Mail CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign"
