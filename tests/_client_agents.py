"""User-Agent strings that real VPN clients send when they fetch a subscription, and the format each gets."""

from __future__ import annotations

from atlas.vpn.formats import Format

REAL_USER_AGENTS = [
    ("v2rayNG/1.8.19", Format.BASE64),
    ("v2rayNG/1.9.16", Format.BASE64),
    ("v2rayN/6.45", Format.XRAY),
    ("v2rayN/7.10.5", Format.XRAY),
    ("v2rayN/6.23", Format.BASE64),  # before 6.40 v2rayN reads share links only
    ("Streisand/1.6.24", Format.BASE64),
    ("Shadowrocket/2070 CFNetwork/1410.0.3 Darwin/22.6.0", Format.BASE64),
    ("NekoBox/Android/1.3.1 (Prefer ClashMeta Format)", Format.BASE64),
    ("HiddifyNext/2.5.7 (android) like ClashMeta v2ray sing-box", Format.SINGBOX),
    ("Hiddify/2.0.5 (ios) like ClashMeta v2ray sing-box", Format.SINGBOX),
    ("clash-verge/v2.0.3", Format.CLASH),
    ("FlClash/v0.8.70 clash-verge Platform/android", Format.CLASH),
    ("Stash/2.4.7 Clash/1.9.0", Format.CLASH),
    ("mihomo/1.18.10", Format.CLASH),
    ("ClashMetaForAndroid/2.10.1.Meta", Format.CLASH),
    ("clash.meta", Format.CLASH),
    ("ClashforWindows/0.20.39", Format.CLASH),
    ("SFA/1.12.12 (sing-box 1.12.12; language en_US)", Format.SINGBOX),
    ("SFI/1.12.12 (Build 2; sing-box 1.12.12; language en_US)", Format.SINGBOX),
    ("SFM/1.13.3 (Build 1; sing-box 1.13.3; language ru_RU)", Format.SINGBOX),
    ("SFT/1.12.12 (Build 1; sing-box 1.12.12; language en_US)", Format.SINGBOX),
    ("karing/1.1.2.606 android", Format.SINGBOX),
    ("Happ/1.63.1", Format.XRAY),
    ("Happ/2.4.1/Android/34", Format.XRAY),
    ("Happ/1.50.0", Format.BASE64),
    ("curl/8.5.0", Format.BASE64),  # unknown: the links every client reads
    ("", Format.BASE64),
]
