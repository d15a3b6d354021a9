//! veer-controller: reads Flagger Canary specs, runs the analysis, moves the weight and
//! serves the routing table that every gateway filter pulls.
