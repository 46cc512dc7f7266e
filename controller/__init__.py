"""meshsec controller: stores topology and policy in etcd and pushes each host's desired state."""
