"""EAP for Wi-Fi (SPEC 10): the packets and the keys; the conversations come on top."""
