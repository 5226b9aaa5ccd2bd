//! PID 1 of the appliance image.
