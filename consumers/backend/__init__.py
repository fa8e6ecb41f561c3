"""The TaxiApp backend (`ridestream backend`): the rider's and the driver app's HTTP API in front of the
stream. It asks the estimate service for a new ride's estimate, publishes the ride's events, and streams the
consumers' predictions for the ride back to the rider (Server-Sent Events)."""
