"""shotnet.sensor: the wire contract, time and geodesy (shared), audio sources, the scene
simulator, trigger, classification, clocks and the node loop."""
