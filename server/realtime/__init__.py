"""Real time: the WebSocket hub that owns every socket of this process, and the cross-process connection gauge."""
