# dev profile: verbose shell
export PS1='nodows-dev:\w# '
