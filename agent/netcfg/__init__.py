"""Host network configuration for the agent (TUN device, addresses, routes, MTU, policy rules).

Owns everything the agent changes in the kernel's networking state, always through netlink (pyroute2)
and the TUN ioctl, never by running `ip`.  Must not touch sockets' data or ESP state.
"""
