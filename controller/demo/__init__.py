"""`meshsec demo`: a whole mesh on one machine, in network namespaces, checked end to end.

Owns the demo's namespaces, processes and temporary directory, and nothing else: it drives the real
`meshsec-controller`, `meshsec-agent` and AdminService exactly as an operator would, so it exercises
the product rather than a special path through it.  Modules: `plan` (names, addresses, mesh.yaml;
pure), `checks` (success criteria; pure), `network` (namespaces via pyroute2), `nsexec` (the
launcher that runs a process in a namespace), `procs` (process lifecycle), `traffic` (ping,
iperf3), `preflight`, `ui` (rich output), `demo` (the steps and the teardown), `main` (the `meshsec` command).
"""
