"""Generated wire stubs for proto/appliance/v1 (`make proto`); do not edit by hand."""
