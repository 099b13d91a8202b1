"""Stable reason codes for tap decisions, with the validator's display texts.

The numbers are part of the API and of the journal: never renumber or reuse
one. Ranges: 0 accepted; 1-39 credential and presentation checks (the fast
path, whose own enum uses the same numbers); 40-59 deny lists and replay;
60-79 fare rules; 80-99 the gateway itself.
"""

from __future__ import annotations

import enum


class Reason(enum.IntEnum):
    ACCEPTED = 0

    # Fast path: decoding and signature checks.
    MALFORMED = 1
    UNSUPPORTED_VERSION = 2
    UNKNOWN_KEY = 3
    REVOKED_KEY = 4
    ISSUER_SIGNATURE_INVALID = 5
    HOLDER_SIGNATURE_INVALID = 6
    CREDENTIAL_EXPIRED = 7
    CREDENTIAL_NOT_YET_VALID = 8
    CODE_EXPIRED = 9
    CODE_FROM_FUTURE = 10
    KEY_RETIRED = 11
    CHALLENGE_MISMATCH = 12
    OFFLINE_UPLOAD_TOO_LATE = 13
    WRONG_MEDIUM = 14

    # Deny lists and replay.
    CARD_REPORTED_LOST = 40
    CREDENTIAL_REVOKED = 41
    ACCOUNT_IN_ARREARS = 42
    REPLAYED = 43
    DUPLICATE_TAP = 44

    # Fare rules.
    NO_FARE_RULE = 60
    ALREADY_ENTERED_TODAY = 61
    CATEGORY_NOT_ELIGIBLE = 62
    NO_RULE_SET = 63
    MEDIUM_NOT_ACCEPTED = 64

    # The gateway.
    INTERNAL_ERROR = 80
    # The device reused one of its tap ids for a different tap (answered 409).
    TAP_ID_CONFLICT = 81
    TAP_TIME_INVALID = 82


# What the validator or gate shows for a rejection: (Chinese, English), short enough for a small screen.
DISPLAY: dict[Reason, tuple[str, str]] = {
    Reason.ACCEPTED: ("请通行", "Accepted"),
    Reason.MALFORMED: ("无法识别，请重试", "Unreadable, try again"),
    Reason.UNSUPPORTED_VERSION: ("码版本不支持，请更新应用", "Code version unsupported, update the app"),
    Reason.UNKNOWN_KEY: ("发卡密钥未知", "Unknown issuer key"),
    Reason.REVOKED_KEY: ("发卡密钥已吊销", "Issuer key revoked"),
    Reason.ISSUER_SIGNATURE_INVALID: ("凭证无效", "Invalid credential"),
    Reason.HOLDER_SIGNATURE_INVALID: ("签名无效", "Invalid signature"),
    Reason.CREDENTIAL_EXPIRED: ("凭证已过期，请更新", "Credential expired, renew it"),
    Reason.CREDENTIAL_NOT_YET_VALID: ("凭证尚未生效", "Credential not yet valid"),
    Reason.CODE_EXPIRED: ("乘车码已过期，请刷新", "Code expired, refresh it"),
    Reason.CODE_FROM_FUTURE: ("手机时间不准，请校准", "Phone clock ahead, fix the time"),
    Reason.KEY_RETIRED: ("凭证无效，请更新", "Credential invalid, renew it"),
    Reason.CHALLENGE_MISMATCH: ("读卡失败，请重刷", "Card read failed, tap again"),
    Reason.OFFLINE_UPLOAD_TOO_LATE: ("离线记录超时", "Offline record too old"),
    Reason.WRONG_MEDIUM: ("介质类型不符", "Wrong medium"),
    Reason.CARD_REPORTED_LOST: ("此卡已挂失", "Card reported lost"),
    Reason.CREDENTIAL_REVOKED: ("凭证已注销", "Credential revoked"),
    Reason.ACCOUNT_IN_ARREARS: ("账户欠费，请缴费", "Account in arrears, please pay"),
    Reason.REPLAYED: ("此码已使用", "Code already used"),
    Reason.DUPLICATE_TAP: ("请勿重复刷卡", "Already tapped"),
    Reason.NO_FARE_RULE: ("此线路暂不支持", "No fare for this route"),
    Reason.ALREADY_ENTERED_TODAY: ("今日已入园", "Already entered today"),
    Reason.CATEGORY_NOT_ELIGIBLE: ("不符合优惠条件", "Not eligible"),
    Reason.NO_RULE_SET: ("票价规则未生效", "No fare rules in effect"),
    Reason.MEDIUM_NOT_ACCEPTED: ("此处不支持该乘车方式", "Card or code not accepted here"),
    Reason.INTERNAL_ERROR: ("系统繁忙，请重试", "System busy, try again"),
    Reason.TAP_ID_CONFLICT: ("记录编号冲突", "Tap id reused"),
    Reason.TAP_TIME_INVALID: ("设备时间不准，请校准", "Device clock wrong, fix the time"),
}


def display(reason: Reason) -> tuple[str, str]:
    return DISPLAY[reason]
