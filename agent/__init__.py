"""meshsec agent: IKEv2 and user-space ESP on one host, driven by the controller's desired state."""
