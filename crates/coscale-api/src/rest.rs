//! Control-plane REST/JSON DTOs.
