"""The ``tapgate`` command.

Each module in :mod:`tapgate.commands` adds its subcommands through a
``register(subparsers, common)`` function, where ``common`` is the parent
parser holding the options every subcommand shares. A subcommand's handler
receives the parsed arguments and the loaded :class:`~gateway.config.Config`,
and returns the exit status.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import re
import sys
from typing import Callable, NoReturn, Sequence

import msgspec

from gateway import logs
from gateway.config import Config, load_config
from gateway.errors import GatewayError, translate_message

Handler = Callable[[argparse.Namespace, Config], int]

DESCRIPTION = """\
沂源县社会保障卡与民生服务码交易网关
Transaction gateway for the Yiyuan social security card and service code:
bus validators, scenic-spot and venue gates, fare rules, journal and settlement."""


# argparse's usage errors (the wording of Python 3.11), for the Chinese line
# printed above the English one. A message that matches none is repeated.
_USAGE_ZH = [
    (re.compile(r"^the following arguments are required: (?P<names>.+)$"), "缺少必需的参数：{names}"),
    (re.compile(r"^unrecognized arguments: (?P<names>.+)$"), "无法识别的参数：{names}"),
    (re.compile(r"^one of the arguments (?P<names>.+) is required$"), "必须给出以下参数之一：{names}"),
    (re.compile(r"^ambiguous option: (?P<option>\S+) could match (?P<names>.+)$"), "选项 {option} 有歧义，可能是：{names}"),
    (re.compile(r"^argument (?P<arg>[^:]+): invalid choice: (?P<value>.+) \(choose from (?P<choices>.+)\)$"),
     "参数 {arg}：无效的选项 {value}（可选：{choices}）"),
    (re.compile(r"^argument (?P<arg>[^:]+): invalid (?P<kind>\S+) value: (?P<value>.+)$"),
     "参数 {arg}：{value} 不是有效的 {kind} 值"),
    (re.compile(r"^argument (?P<arg>[^:]+): expected one argument$"), "参数 {arg}：需要一个值"),
    (re.compile(r"^argument (?P<arg>[^:]+): expected at least one argument$"), "参数 {arg}：至少需要一个值"),
    (re.compile(r"^argument (?P<arg>[^:]+): not allowed with argument (?P<other>.+)$"),
     "参数 {arg}：不能与参数 {other} 同时使用"),
    (re.compile(r"^argument (?P<arg>[^:]+): ignored explicit argument (?P<value>.+)$"),
     "参数 {arg}：不接受值 {value}"),
    (re.compile(r"^argument (?P<arg>[^:]+): expected at most one argument$"), "参数 {arg}：最多只能有一个值"),
]

# The project's own type checks raise ArgumentTypeError("English / 中文"),
# which argparse prefixes with "argument NAME: ".
_BILINGUAL_TYPE_ERROR = re.compile(r"^argument (?P<arg>[^:]+): (?P<en>.+) / (?P<zh>[^/]*[\u4e00-\u9fff][^/]*)$")


def usage_error_zh(message: str) -> str:
    """Return argparse's usage error ``message`` in Chinese (unchanged if its wording is unknown)."""
    bilingual = _BILINGUAL_TYPE_ERROR.match(message)
    if bilingual:
        return f"参数 {bilingual['arg']}：{bilingual['zh']}"
    return translate_message(message, _USAGE_ZH) or message


class BilingualArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are printed in Chinese, then English.

    Subcommand parsers inherit the class through ``add_subparsers``.
    """

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        bilingual = _BILINGUAL_TYPE_ERROR.match(message)
        english = f"argument {bilingual['arg']}: {bilingual['en']}" if bilingual else message
        self.exit(2, f"{self.prog}: 错误：{usage_error_zh(message)}\n{self.prog}: error: {english}\n")


def common_parser(*, nested: bool = False) -> argparse.ArgumentParser:
    """Return the parent parser of the options every subcommand shares.

    The copy given to subcommands (``nested=True``) has no defaults, so an
    option placed before the subcommand (``tapgate --dsn X migrate``) is not
    overwritten by the subcommand parser's default.
    """
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS if nested else None)
    group = common.add_argument_group("common options / 通用选项")
    group.add_argument("--config", metavar="FILE",
                       help="TOML configuration file; TAPGATE_<SECTION>_<KEY> variables override it "
                            "/ TOML 配置文件，可被 TAPGATE_<节>_<键> 环境变量覆盖")
    group.add_argument("--dsn", metavar="DSN",
                       help="PostgreSQL DSN (also TAPGATE_DATABASE_DSN); without one the embedded server is started "
                            "/ PostgreSQL 连接串；不指定时启动内嵌服务器")
    group.add_argument("--data-dir", metavar="DIR",
                       help="data directory of the embedded PostgreSQL (default ~/.local/state/tapgate/pgdata) "
                            "/ 内嵌 PostgreSQL 的数据目录")
    group.add_argument("--log-level", metavar="LEVEL", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                       help="DEBUG, INFO, WARNING or ERROR (default INFO, or TAPGATE_LOG_LEVEL) / 日志级别")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = common_parser(nested=True)
    parser = BilingualArgumentParser(prog="tapgate", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     parents=[common_parser()])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands / 子命令")
    import tapgate.commands as commands

    for module_info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"tapgate.commands.{module_info.name}")
        module.register(subparsers, common)
    return parser


def resolve_config(args: argparse.Namespace) -> Config:
    """Load the configuration file and apply the command-line overrides of the common options."""
    config = load_config(args.config)
    database = config.database
    if args.dsn:
        database = msgspec.structs.replace(database, dsn=args.dsn)
    if args.data_dir:
        database = msgspec.structs.replace(database, data_dir=args.data_dir)
    return msgspec.structs.replace(config, database=database)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    logs.configure(args.log_level)
    try:
        config = resolve_config(args)
        return int(args.handler(args, config) or 0)
    except GatewayError as exc:
        print(f"错误 / error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("已中断 / interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
