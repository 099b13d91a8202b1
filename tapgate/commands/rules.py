"""``tapgate rules``: validate, diff, draft, publish, roll back, list, show and simulate fare rule sets.

A rule set is given either as a file (TOML, YAML or JSON, recognised by the
file name extension) or as a stored version number. Effective times are local time
(Asia/Shanghai) unless they carry an offset.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import getpass
import pathlib
import sys
import time

import msgspec

from gateway import db
from gateway.config import Config
from gateway.errors import GatewayError
from gateway.rules import RuleSetError, compile_rule_set, format_for_path, load_rule_set_document
from gateway.rules import store
from gateway.rules.diff import diff_documents
from gateway.rules.simulate import format_report, simulate
from gateway.rules.validate import document_from_builtins, document_to_builtins
from gateway.timeutil import LOCAL_TZ, to_unix_ms
from tapgate import runtime


class UsageError(GatewayError, ValueError):
    """A command-line argument is invalid."""


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "rules", parents=[common], help="fare rule sets: validate, publish, simulate / 票价规则：校验、发布、模拟",
        description="Validate fare rule-set documents, manage their versions and simulate a draft on past taps. "
                    "/ 校验票价规则文件，管理规则版本，并用历史交易模拟草稿。")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", title="actions / 操作", required=True)

    validate = actions.add_parser("validate", parents=[common], help="check a rule-set file / 校验规则文件")
    validate.add_argument("file", help="rule-set file (.toml, .yaml, .yml or .json) / 规则文件")
    validate.set_defaults(handler=run_validate)

    diff = actions.add_parser("diff", parents=[common],
                              help="show field changes between two rule sets / 比较两个规则集的字段差异")
    diff.add_argument("old", help="file, or stored version number / 文件或已存版本号")
    diff.add_argument("new", help="file, or stored version number / 文件或已存版本号")
    diff.set_defaults(handler=run_diff)

    draft = actions.add_parser("draft", parents=[common], help="store a file as a new draft / 将文件存为新草稿")
    draft.add_argument("file", help="rule-set file / 规则文件")
    draft.add_argument("--note", default="", help="what changes and why / 变更说明")
    draft.add_argument("--based-on", type=int, metavar="VERSION", help="version the draft starts from / 基于的版本")
    _actor_option(draft)
    draft.set_defaults(handler=run_draft)

    publish = actions.add_parser("publish", parents=[common],
                                 help="publish a draft (or a file) with an effective time / 发布草稿并设定生效时间")
    target = publish.add_mutually_exclusive_group(required=True)
    target.add_argument("--version", type=int, help="draft version to publish / 要发布的草稿版本")
    target.add_argument("--file", help="store this file as a draft and publish it / 将文件存为草稿并发布")
    publish.add_argument("--effective-from", default="now", metavar="TIME",
                         help='local time "YYYY-MM-DD HH:MM" (or ISO 8601 with offset, or "now") '
                              '/ 生效时间（本地时间），默认立即')
    publish.add_argument("--allow-past", action="store_true",
                         help="accept an effective time in the past / 允许生效时间早于当前")
    publish.add_argument("--note", default="", help="what changes and why, with --file / 变更说明")
    _actor_option(publish)
    publish.set_defaults(handler=run_publish)

    rollback = actions.add_parser("rollback", parents=[common],
                                  help="publish a copy of an earlier published version / 回滚到已发布的旧版本")
    rollback.add_argument("version", type=int, help="published version to restore / 要恢复的版本")
    rollback.add_argument("--effective-from", default="now", metavar="TIME", help="local time, or now / 生效时间")
    rollback.add_argument("--note", default="", help="why / 回滚原因")
    _actor_option(rollback)
    rollback.set_defaults(handler=run_rollback)

    listing = actions.add_parser("list", parents=[common], help="list stored versions / 列出已存版本")
    listing.add_argument("--status", choices=["draft", "published"], help="only drafts or published / 按状态筛选")
    listing.set_defaults(handler=run_list)

    show = actions.add_parser("show", parents=[common], help="print a stored version / 显示已存版本")
    show.add_argument("version", type=int, help="version number / 版本号")
    show.add_argument("--as", dest="output", choices=["source", "json", "audit"], default="source",
                      help="source: the text as written; json: the validated document; audit: its history "
                           "/ source 原文，json 校验后的文档，audit 修改记录")
    show.set_defaults(handler=run_show)

    sim = actions.add_parser("simulate", parents=[common],
                             help="price past taps under a draft and compare / 用历史交易模拟草稿并比较收入与补贴")
    sim_target = sim.add_mutually_exclusive_group(required=True)
    sim_target.add_argument("--version", type=int, help="stored version (usually a draft) / 已存版本")
    sim_target.add_argument("--file", help="rule-set file / 规则文件")
    sim.add_argument("--from", dest="first_day", required=True, type=_date, metavar="YYYY-MM-DD",
                     help="first business day / 起始营业日")
    sim.add_argument("--to", dest="last_day", required=True, type=_date, metavar="YYYY-MM-DD",
                     help="last business day, inclusive / 结束营业日（含）")
    sim.add_argument("--json", action="store_true", help="print the report as JSON / 以 JSON 输出")
    sim.add_argument("--no-progress", action="store_true", help="hide the progress bar / 不显示进度条")
    sim.set_defaults(handler=run_simulate)

    gtfs = actions.add_parser("import-gtfs", parents=[common],
                              help="convert GTFS Fares v2 files into a rule-set file / 将 GTFS Fares v2 文件转换为规则文件")
    gtfs.add_argument("source", help="folder or .zip with the GTFS files / 含 GTFS 文件的目录或 .zip")
    gtfs.add_argument("--output", "-o", required=True, metavar="FILE",
                      help="rule-set file to write (.yaml, .yml or .json) / 输出的规则文件")
    gtfs.add_argument("--rule-set-id", default="imported", help="id of the new rule set / 新规则集的标识")
    gtfs.set_defaults(handler=run_import_gtfs)


def _actor_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--actor", default=None,
                        help="name recorded in the audit trail (default cli:<login name>) / 审计记录中的操作人")


def _actor(args: argparse.Namespace) -> str:
    return args.actor or f"cli:{getpass.getuser()}"


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid date {text!r}: use YYYY-MM-DD / 日期 {text!r} 无效，应为 YYYY-MM-DD")


def parse_effective(text: str, now_ms: int | None = None) -> int:
    """Return Unix ms for "now", a local "YYYY-MM-DD HH:MM[:SS]", or ISO 8601 with an offset."""
    if text == "now":
        return int(time.time() * 1000) if now_ms is None else now_ms
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"invalid effective time {text!r}", f"生效时间无效：{text!r}",
                         'use "YYYY-MM-DD HH:MM" local time, ISO 8601 with an offset, or "now" '
                         '/ 请使用本地时间 "YYYY-MM-DD HH:MM"、带时区的 ISO 8601 或 "now"') from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=LOCAL_TZ)
    return to_unix_ms(moment)


def _read_file(path: str) -> tuple[str, str]:
    file = pathlib.Path(path)
    try:
        fmt = format_for_path(file.name)
    except ValueError as exc:
        raise UsageError(str(exc), f"无法判断 {file.name} 的格式：文件名应以 .toml、.yaml、.yml 或 .json 结尾") from None
    try:
        return file.read_text(encoding="utf-8"), fmt
    except OSError as exc:
        raise UsageError(f"cannot read {file}: {exc.strerror}", f"无法读取 {file}：{exc.strerror}",
                         "check the path / 请检查路径") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{file} is not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r})",
                         f"{file} 不是 UTF-8 文本（第 {exc.start} 字节：{exc.object[exc.start:exc.start + 1]!r}）",
                         "save the file as UTF-8 / 请将文件另存为 UTF-8 编码") from None


def _print_problems(error: RuleSetError) -> None:
    for problem in error.problems:
        print(f"✗ {problem.message_zh}", file=sys.stderr)
        print(f"  {problem.message_en}", file=sys.stderr)
    print(f"共 {len(error.problems)} 处问题 / {len(error.problems)} problem(s)", file=sys.stderr)


def run_validate(args: argparse.Namespace, config: Config) -> int:
    text, fmt = _read_file(args.file)
    try:
        doc = load_rule_set_document(text, fmt)
        book = compile_rule_set(doc)
    except RuleSetError as exc:
        _print_problems(exc)
        return 1
    marker = "（示例 / illustrative）" if doc.rule_set.illustrative else ""
    print(f"✓ 有效 / valid: {doc.rule_set.rule_set_id} {marker}")
    print(f"  线路 / routes: {len(book.routes)}  场所 / sites: {len(book.sites)}  "
          f"票种 / products: {len(book.products)}  乘客类别 / rider categories: {len(book.categories)}")
    return 0


def _is_version(text: str) -> bool:
    return text.isdigit()


def run_diff(args: argparse.Namespace, config: Config) -> int:
    if _is_version(args.old) or _is_version(args.new):
        with runtime.database(config) as dsn:
            old, new = asyncio.run(_load_pair(dsn, args.old, args.new))
    else:
        old, new = _plain_from_file(args.old), _plain_from_file(args.new)
    changes = diff_documents(old, new)
    for change in changes:
        print(change.describe())
    print(f"共 {len(changes)} 处差异 / {len(changes)} change(s)")
    return 0


def _plain_from_file(path: str) -> dict:
    text, fmt = _read_file(path)
    return document_to_builtins(load_rule_set_document(text, fmt))


async def _load_pair(dsn: str, old: str, new: str) -> tuple[dict, dict]:
    async with db.connection(dsn) as conn:
        result = []
        for item in (old, new):
            if _is_version(item):
                result.append((await store.get_version(conn, int(item))).document)
            else:
                result.append(_plain_from_file(item))
        return result[0], result[1]


def _with_conn(config: Config, action):
    with runtime.database(config) as dsn:
        async def run():
            async with db.connection(dsn) as conn:
                return await action(conn)

        return asyncio.run(run())


def run_draft(args: argparse.Namespace, config: Config) -> int:
    text, fmt = _read_file(args.file)
    try:
        version = _with_conn(config, lambda conn: store.create_draft(conn, text, fmt, _actor(args), note=args.note,
                                                                     based_on=args.based_on))
    except RuleSetError as exc:
        _print_problems(exc)
        return 1
    print(f"已保存草稿 / draft stored: version {version}")
    return 0


def run_publish(args: argparse.Namespace, config: Config) -> int:
    effective_ms = parse_effective(args.effective_from)
    actor = _actor(args)
    source = _read_file(args.file) if args.file else None

    async def action(conn):
        version = args.version
        if source is not None:
            version = await store.create_draft(conn, source[0], source[1], actor, note=args.note)
        return await store.publish(conn, version, effective_ms, actor, allow_past=args.allow_past)

    try:
        info = _with_conn(config, action)
    except RuleSetError as exc:
        _print_problems(exc)
        return 1
    print(f"已发布 / published: version {info.version}, 生效 / effective from "
          f"{info.effective_from.astimezone(LOCAL_TZ).isoformat()}")
    return 0


def run_rollback(args: argparse.Namespace, config: Config) -> int:
    effective_ms = parse_effective(args.effective_from)
    info = _with_conn(config, lambda conn: store.rollback(conn, args.version, effective_ms, _actor(args),
                                                          note=args.note))
    print(f"已回滚 / rolled back: version {args.version} republished as version {info.version}, "
          f"生效 / effective from {info.effective_from.astimezone(LOCAL_TZ).isoformat()}")
    return 0


def _local(moment: dt.datetime | None) -> str:
    return moment.astimezone(LOCAL_TZ).strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def run_list(args: argparse.Namespace, config: Config) -> int:
    versions = _with_conn(config, lambda conn: store.list_versions(conn, args.status))
    print("版本/version | 状态/status | 规则集/rule set | 生效/effective from | 创建人/created by | 说明/note")
    for info in versions:
        print(f"{info.version} | {info.status} | {info.rule_set_id} | {_local(info.effective_from)} | "
              f"{info.created_by} | {info.note}")
    if not versions:
        print("（无 / none）")
    return 0


def run_show(args: argparse.Namespace, config: Config) -> int:
    if args.output == "audit":
        entries = _with_conn(config, lambda conn: store.audit_log(conn, args.version))
        for entry in reversed(entries):
            print(f"{_local(entry.at)} {entry.actor} {entry.action}")
            for change in entry.detail.get("changes", []):
                print(f"    {change['op']} {change['path']}: {change.get('old')!r} -> {change.get('new')!r}")
        return 0
    record = _with_conn(config, lambda conn: store.get_version(conn, args.version))
    if args.output == "json":
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(record.document), indent=2).decode() + "\n")
    else:
        sys.stdout.write(record.source_text)
    return 0


def run_simulate(args: argparse.Namespace, config: Config) -> int:
    if args.last_day < args.first_day:
        raise UsageError(f"--to {args.last_day} is before --from {args.first_day}",
                         f"--to {args.last_day} 早于 --from {args.first_day}", "swap the dates / 请交换日期")
    source = _read_file(args.file) if args.file else None

    async def action(conn):
        if source is not None:
            doc = load_rule_set_document(*source)
            version = 0
        else:
            record = await store.get_version(conn, args.version)
            doc = document_from_builtins(record.document)
            version = record.version
        draft = compile_rule_set(doc, version=version)
        return await simulate(conn, draft, args.first_day, args.last_day, progress=not args.no_progress)

    try:
        report = _with_conn(config, action)
    except RuleSetError as exc:
        _print_problems(exc)
        return 1
    if args.json:
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(report.to_builtins()), indent=2).decode() + "\n")
    else:
        for line in format_report(report):
            print(line)
    return 0


def run_import_gtfs(args: argparse.Namespace, config: Config) -> int:
    import json

    import yaml

    from gateway.rules.gtfs import import_gtfs

    output = pathlib.Path(args.output)
    fmt = format_for_path(output.name) if output.suffix.lower() != ".toml" else "toml"
    if fmt == "toml":
        raise UsageError("writing TOML is not supported: use .yaml or .json", "不支持输出 TOML：请使用 .yaml 或 .json")
    source = pathlib.Path(args.source)
    if not source.exists():
        raise UsageError(f"GTFS source {source} not found", f"找不到 GTFS 数据 {source}", "check the path / 请检查路径")
    result = import_gtfs(source, args.rule_set_id)
    if fmt == "yaml":
        text = yaml.safe_dump(result.document, allow_unicode=True, sort_keys=False)
    else:
        text = json.dumps(result.document, ensure_ascii=False, indent=2) + "\n"
    output.write_text(text, encoding="utf-8")
    print(f"已写入 / written: {output}")
    for item in result.unmapped:
        print(f"未能映射 / not mapped: {item.describe()}")
    print(f"共 {len(result.unmapped)} 项未能完整映射 / {len(result.unmapped)} item(s) not fully mapped")
    if result.problems:
        for problem in result.problems:
            print(f"✗ {problem.message_zh}", file=sys.stderr)
            print(f"  {problem.message_en}", file=sys.stderr)
        print("导入结果尚不是有效的规则集，请编辑后再校验 / the result is not a valid rule set yet: edit it and "
              "validate again", file=sys.stderr)
        return 1
    return 0
