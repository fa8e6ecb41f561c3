"""The estimate service (`ridestream serve`): the initial estimate of a ride over HTTP, from the same models,
features and registry versions as the streaming services."""
