#!/usr/bin/env bash
# Make the TLS material the chart's etcd StatefulSet and the controller use, and print it as the
# Kubernetes Secret the chart expects (keys ca.crt, tls.crt, tls.key; type kubernetes.io/tls).
#
# Usage: deploy/gen-etcd-tls.sh [--release NAME] [--namespace NS] [--secret NAME] [--days N] DIR
#   writes DIR/ca.crt DIR/ca.key DIR/tls.crt DIR/tls.key and prints the Secret YAML on stdout:
#   deploy/gen-etcd-tls.sh /root/meshsec-etcd-pki | kubectl apply -f -
# One certificate serves etcd's client and peer ports and is also the controller's client
# certificate (serverAuth + clientAuth).  Keep DIR/ca.key offline.  Needs openssl.
set -euo pipefail

RELEASE=meshsec NAMESPACE=meshsec SECRET=meshsec-etcd-tls DAYS=3650
while [ $# -gt 1 ]; do
    case "$1" in
        --release) RELEASE="$2"; shift 2 ;;
        --namespace) NAMESPACE="$2"; shift 2 ;;
        --secret) SECRET="$2"; shift 2 ;;
        --days) DAYS="$2"; shift 2 ;;
        *) echo "gen-etcd-tls: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ $# -eq 1 ] || { sed -n '2,10p' "$0" >&2; exit 2; }
DIR="$1"
# The chart's names: <fullname>-etcd-<i>.<fullname>-etcd-peer.<ns>.svc (fullname as in _helpers.tpl).
case "$RELEASE" in *meshsec*) FULL="$RELEASE" ;; *) FULL="$RELEASE-meshsec" ;; esac
PEER="$FULL-etcd-peer.$NAMESPACE.svc"

mkdir -p "$DIR"
chmod 700 "$DIR"
if [ ! -s "$DIR/ca.key" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$DAYS" \
        -subj "/CN=meshsec etcd CA" -keyout "$DIR/ca.key" -out "$DIR/ca.crt" 2>/dev/null
fi
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$FULL-etcd" \
    -keyout "$DIR/tls.key" -out "$DIR/tls.csr" 2>/dev/null
cat >"$DIR/ext.cnf" <<EXT
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = DNS:*.$PEER, DNS:*.$PEER.cluster.local, DNS:$PEER, DNS:localhost, IP:127.0.0.1
EXT
openssl x509 -req -in "$DIR/tls.csr" -CA "$DIR/ca.crt" -CAkey "$DIR/ca.key" -CAcreateserial \
    -days "$DAYS" -extfile "$DIR/ext.cnf" -out "$DIR/tls.crt" 2>/dev/null
rm -f "$DIR/tls.csr" "$DIR/ext.cnf" "$DIR/ca.srl"
chmod 600 "$DIR"/*.key

b64() { base64 -w0 <"$1"; }
cat <<YAML
apiVersion: v1
kind: Secret
metadata:
  name: $SECRET
  namespace: $NAMESPACE
type: kubernetes.io/tls
data:
  ca.crt: $(b64 "$DIR/ca.crt")
  tls.crt: $(b64 "$DIR/tls.crt")
  tls.key: $(b64 "$DIR/tls.key")
YAML
