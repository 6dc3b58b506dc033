"""Programs built on the SDK (the demo, the simulated device, the cloud operator, AWS provisioning):
not part of the SDK itself."""
