#!/usr/bin/env bash
# Make the TLS material of a FloRec deployment with openssl (and SuperNode keys with ssh-keygen).
#
#   deploy/certs.sh [-o DIR] [-n NAME]... [-k N] [-s] [-d DAYS]
#
#   -o DIR   output folder (default: deploy/certs next to this script)
#   -n NAME  extra name of the SuperLink: a DNS name or an IPv4 address the SuperNodes and the
#            flwr CLI use to reach it (repeatable). Always included: localhost, 127.0.0.1, superlink.
#   -k N     also make N SuperNode authentication key pairs (ECDSA P-384, OpenSSH format):
#            supernode-<i>.key (private, stays on node i) and supernode-<i>.pub (register it
#            with `flwr supernode register supernode-<i>.pub <connection>`)
#   -s       also make superexec.secret, the shared secret of SuperExec authentication
#            (give it to the SuperLink, the SuperNodes and every SuperExec)
#   -d DAYS  validity of the certificates (default 365)
#
# Writes DIR/ca.crt (give it to every SuperNode and flwr CLI), DIR/ca.key (keep it offline),
# DIR/server.pem and DIR/server.key (the SuperLink's certificate and key).
# The CA is self-signed: fine for a lab or a private federation, not a public service.
set -euo pipefail

out="$(cd "$(dirname "$0")" && pwd)/certs"
names=()
keys=0
secret=0
days=365
while getopts "o:n:k:sd:h" opt; do
  case "$opt" in
    o) out="$OPTARG" ;;
    n) names+=("$OPTARG") ;;
    k) keys="$OPTARG" ;;
    s) secret=1 ;;
    d) days="$OPTARG" ;;
    h) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "usage: $0 [-o DIR] [-n NAME]... [-k N] [-s] [-d DAYS]" >&2; exit 2 ;;
  esac
done
command -v openssl >/dev/null || { echo "certs.sh: openssl is not installed" >&2; exit 1; }
mkdir -p "$out"
cd "$out"

san="DNS:localhost,IP:127.0.0.1,DNS:superlink"
for n in "${names[@]+"${names[@]}"}"; do
  if [[ "$n" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]]; then san+=",IP:$n"; else san+=",DNS:$n"; fi
done

# Certificate authority (self-signed).
openssl req -x509 -newkey rsa:2048 -sha256 -days "$days" -nodes -keyout ca.key -out ca.crt \
  -subj "/CN=FloRec deployment CA" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -addext "subjectKeyIdentifier=hash" 2>/dev/null

# SuperLink server certificate, signed by the CA, valid for every name in $san.
openssl req -newkey rsa:2048 -sha256 -nodes -keyout server.key -out server.csr \
  -subj "/CN=superlink" 2>/dev/null
cat > server.ext <<EOF
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer
subjectAltName=$san
EOF
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.pem \
  -days "$days" -sha256 -extfile server.ext 2>/dev/null
rm -f server.csr server.ext ca.srl
chmod 600 ca.key server.key

# SuperNode authentication keys (optional).
if [ "$keys" -gt 0 ]; then
  command -v ssh-keygen >/dev/null || { echo "certs.sh: ssh-keygen is not installed" >&2; exit 1; }
  for ((i = 0; i < keys; i++)); do
    rm -f "supernode-$i.key" "supernode-$i.key.pub" "supernode-$i.pub"
    ssh-keygen -q -t ecdsa -b 384 -N "" -C "florec-supernode-$i" -f "supernode-$i.key"
    mv "supernode-$i.key.pub" "supernode-$i.pub"
  done
fi
# SuperExec shared secret (optional): raw bytes, no trailing newline.
if [ "$secret" -eq 1 ]; then
  openssl rand -hex 32 | tr -d '\n' > superexec.secret
  chmod 600 superexec.secret
fi
echo "certs.sh: wrote $out (SuperLink names: $san; SuperNode key pairs: $keys)"
